package policy

import "time"

// CopyModel is how long CRIU takes to copy n pages in one round: a part
// every round pays (walking the page map of every mapping, setting up
// pipes) plus the pages over the bandwidth.
type CopyModel struct {
	PerRound       time.Duration
	PagesPerSecond float64
}

// Time is the model's copy time for pages.
func (m CopyModel) Time(pages uint64) time.Duration {
	if m.PagesPerSecond <= 0 {
		return m.PerRound
	}
	return m.PerRound + seconds(float64(pages)/m.PagesPerSecond)
}

// EstimateCopy fits a CopyModel through the rounds' (pages written, copy
// time) by least squares. Round 1, which copies everything, pins the
// bandwidth and the small later rounds pin the per-round part, which a
// plain pages/time ratio would smear over a small final delta (recorded:
// ~60 ms per round of a 256 MiB Go process under TCG, half the copy time
// of a 2,500-page delta). Rounds of about one size (a load that rewrites
// everything) cannot separate the two: then the model is the ratio of the
// sums, with no per-round part.
func EstimateCopy(rounds []Round) CopyModel {
	var n, sx, sy, sxx, sxy, minX, maxX float64
	for i, r := range rounds {
		x, y := float64(r.PagesWritten), r.copyTime().Seconds()
		n, sx, sy, sxx, sxy = n+1, sx+x, sy+y, sxx+x*x, sxy+x*y
		if i == 0 || x < minX {
			minX = x
		}
		maxX = max(maxX, x)
	}
	if n == 0 || sx == 0 {
		if n == 0 {
			return CopyModel{}
		}
		return CopyModel{PerRound: seconds(sy / n)}
	}
	ratio := CopyModel{PagesPerSecond: sx / sy}
	// Sizes must differ at least twofold for the fit to mean anything.
	if maxX < 2*minX {
		return ratio
	}
	slope := (n*sxy - sx*sy) / (n*sxx - sx*sx)
	intercept := (sy - slope*sx) / n
	if slope <= 0 || intercept < 0 {
		return ratio
	}
	return CopyModel{PerRound: seconds(intercept), PagesPerSecond: 1 / slope}
}

// Bandwidth is the pages per second CRIU copies, from the rounds' memdump
// plus memwrite times (wall times for rounds without them), not counting
// the part every round pays whatever it copies.
func Bandwidth(rounds []Round) float64 { return EstimateCopy(rounds).PagesPerSecond }

// DirtyRate is the pages per second the container dirties, as the last
// round measured it: the pages it wrote over the time from the previous
// round's start to its own. (Soft-dirty is reset while the previous round
// has the task frozen, just after its start, and read while this one has
// it frozen, just after its start.) Round 1 writes every resident page, so
// there is no rate before two rounds (ok is false), except after an
// incremental round 1 that counted its pages dirtied (see dirtyRate).
//
// pages_written counts distinct pages, so over an interval longer than the
// load takes to rewrite its working set this is a lower bound; see
// PredictFinalPages for how that is handled.
func DirtyRate(rounds []Round) (pagesPerSecond float64, ok bool) {
	rate, _, ok := dirtyRate(rounds)
	return rate, ok
}

// dirtyRate is DirtyRate and the dirtying time it was measured over.
//
// An incremental round 1 (it dumped against the last checkpoint's image:
// PagesSkippedParent) measures the rate itself: the pages its tasks wrote
// from its soft-dirty reset to the count right after it (Dirtied over
// DirtiedAfter), the same distinct-page count over a known time as a later
// round's pages_written: its prediction is the count's, not every resident
// page (but little-gain does not stop it there: see Decide). A full round 1 has the
// same count, but the stop rules were validated on recordings (testdata)
// that take the rate from round 2 and have no count; until they are
// recorded again with it, a full round 1 predicts the worst case.
func dirtyRate(rounds []Round) (float64, time.Duration, bool) {
	k := len(rounds)
	switch {
	case k == 0:
		return 0, 0, false
	case k == 1:
		r := rounds[0]
		if r.PagesSkippedParent == 0 || r.DirtiedAfter <= 0 {
			return 0, 0, false
		}
		return float64(r.Dirtied) / r.DirtiedAfter.Seconds(), r.DirtiedAfter, true
	}
	d := interval(rounds[k-2], rounds[k-1])
	if d <= 0 {
		return 0, 0, false
	}
	return float64(rounds[k-1].PagesWritten) / d.Seconds(), d, true
}

// interval is the time from a's start to b's, or a's wall time when the
// starts are unknown.
func interval(a, b Round) time.Duration {
	if !a.Start.IsZero() && b.Start.After(a.Start) {
		return b.Start.Sub(a.Start)
	}
	return a.Wall
}

// TimeUntilFinal is the dirtying time a final dump started now would
// copy: from the last round's start (its soft-dirty reset) to now (the
// final dump's own), given elapsed since round 1 started. Without start
// times the rounds are taken to run back to back.
func TimeUntilFinal(rounds []Round, elapsed time.Duration) time.Duration {
	k := len(rounds)
	if k == 0 {
		return 0
	}
	last := rounds[k-1]
	if !rounds[0].Start.IsZero() && !last.Start.IsZero() {
		now := rounds[0].Start.Add(elapsed)
		return max(now.Sub(last.Start), last.Wall)
	}
	before := time.Duration(0)
	for _, r := range rounds[:k-1] {
		before += r.Wall
	}
	return max(elapsed-before, last.Wall)
}

// PredictFinalPages is how many pages a final dump would copy if it froze
// the container untilFinal after the last round started.
//
// The count of distinct dirty pages only grows with time, and grows at
// most linearly (a page rewritten twice counts once). So the last round's
// count is an upper bound for any shorter time, and scaling it linearly is
// an upper bound for any longer time: the prediction is the dirty rate
// times the longer of untilFinal and the measured interval, never more
// than the resident set. Without a rate (after a full round 1) it is the
// worst case: every resident page.
func PredictFinalPages(rounds []Round, untilFinal time.Duration) uint64 {
	k := len(rounds)
	if k == 0 {
		return 0
	}
	last := rounds[k-1]
	rate, over, ok := dirtyRate(rounds)
	if !ok {
		return last.resident()
	}
	t := max(untilFinal, over)
	pages := rate * t.Seconds()
	if pages >= float64(last.resident()) {
		return last.resident()
	}
	return uint64(pages + 0.5)
}

// PredictFinalFreeze is the freeze a final dump would cause if it froze
// the container untilFinal after the last round started: the fixed cost
// plus the copy time of the pages PredictFinalPages expects.
func PredictFinalFreeze(cfg Config, rounds []Round, untilFinal time.Duration) time.Duration {
	return fixedCost(cfg, rounds) + EstimateCopy(rounds).Time(PredictFinalPages(rounds, untilFinal))
}

// fixedCost is the configured fixed cost of a final dump, or more if a
// round froze the task longer than that without copying memory: a final
// dump freezes and injects the parasite just as a pre-dump does, so it
// cannot take less (a slow or loaded machine shows here first).
func fixedCost(cfg Config, rounds []Round) time.Duration {
	var least time.Duration
	for i, r := range rounds {
		if o := r.freezeOverhead(); i == 0 || o < least {
			least = o
		}
	}
	return max(cfg.FinalDumpFixedCost, least)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
