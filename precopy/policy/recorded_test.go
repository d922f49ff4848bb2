package policy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// recording is one testdata file: a memload run in the soft-dirty VM with
// its pre-dump rounds, the final dump on the last one and a one-shot dump
// for comparison. testdata/README.md says how they were made.
type recording struct {
	Scenario    string          `json:"scenario"`
	MiB         int             `json:"mib"`
	DirtyMiBps  float64         `json:"dirty_mibps"`
	Hot         float64         `json:"hot"`
	PreDumpMode string          `json:"pre_dump_mode"`
	Rounds      []recordedRound `json:"rounds"`
	Final       recordedRound   `json:"final_dump"`
	OneShot     recordedRound   `json:"one_shot"`
}

type recordedRound struct {
	Index      int     `json:"index"`
	StartMS    float64 `json:"start_ms"`
	WallMS     float64 `json:"wall_ms"`
	ImageBytes int64   `json:"image_bytes"`
	Stats      struct {
		FrozenUS     uint32 `json:"frozen_time_us"`
		MemdumpUS    uint32 `json:"memdump_time_us"`
		MemwriteUS   uint32 `json:"memwrite_time_us"`
		PagesScanned uint64 `json:"pages_scanned"`
		PagesSkipped uint64 `json:"pages_skipped_parent"`
		PagesWritten uint64 `json:"pages_written"`
	} `json:"stats"`
}

// epoch anchors the recorded start offsets; any instant would do.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
func us(v uint32) time.Duration  { return time.Duration(v) * time.Microsecond }

func (r recordedRound) round() Round {
	return Round{
		Index:              r.Index,
		PagesWritten:       r.Stats.PagesWritten,
		PagesSkippedParent: r.Stats.PagesSkipped,
		PagesScanned:       r.Stats.PagesScanned,
		Frozen:             us(r.Stats.FrozenUS),
		MemDump:            us(r.Stats.MemdumpUS),
		MemWrite:           us(r.Stats.MemwriteUS),
		Start:              epoch.Add(ms(r.StartMS)),
		Wall:               ms(r.WallMS),
		ImageBytes:         r.ImageBytes,
	}
}

func (r recordedRound) end() time.Duration { return ms(r.StartMS + r.WallMS) }

func (rec recording) rounds() []Round {
	out := make([]Round, len(rec.Rounds))
	for i, r := range rec.Rounds {
		out[i] = r.round()
	}
	return out
}

func loadRecordings(t *testing.T) map[string]recording {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no recordings in testdata: %v", err)
	}
	recs := make(map[string]recording)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rec recording
		if err := json.Unmarshal(data, &rec); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if want := strings.TrimSuffix(filepath.Base(f), ".json"); rec.Scenario != want || len(rec.Rounds) < 3 {
			t.Fatalf("%s: scenario %q with %d rounds", f, rec.Scenario, len(rec.Rounds))
		}
		recs[rec.Scenario] = rec
	}
	return recs
}

// replay asks Decide after each recorded round, as the engine would at
// that round's end, and returns the rounds it ran and the stop decision.
func replay(t *testing.T, cfg Config, rec recording) (int, Decision) {
	t.Helper()
	rounds := rec.rounds()
	for k := 1; k <= len(rounds); k++ {
		d := Decide(cfg, rounds[:k], rec.Rounds[k-1].end())
		t.Logf("%s after round %d: %v", rec.Scenario, k, d)
		if !d.Continue {
			return k, d
		}
	}
	return len(rounds), Decision{Continue: true}
}

// tcgConfig is DefaultConfig scaled to the recordings' machine: under TCG
// the final dumps' non-memory freeze (frozen_time - memdump_time) was
// 148-248 ms, median ~205, where ~160 ms is expected natively. The target
// keeps the default's proportion, twice the fixed cost.
func tcgConfig() Config {
	c := DefaultConfig()
	c.FinalDumpFixedCost = 200 * time.Millisecond
	c.TargetFreeze = 400 * time.Millisecond
	return c
}

// TestRecordedDecisions replays every recording through Decide and checks
// where it stops, why, and that its prediction is within a factor of 2 of
// the freeze the recorded final dump actually caused. The recording's
// final dump ran after round 5, not where the policy stopped; by then the
// converging loads had settled, so it stands for any final dump after the
// rounds stopped shrinking.
func TestRecordedDecisions(t *testing.T) {
	recs := loadRecordings(t)
	for _, tc := range []struct {
		scenario           string
		minRounds, maxRuns int
		reasons            []Reason
	}{
		// A dirty rate needs two rounds (round 1 writes everything), so
		// the earliest measured stop is after round 2.
		{"idle-256m", 2, 2, []Reason{ReasonTargetMet, ReasonConverged}},
		{"idle-256m-read", 2, 2, []Reason{ReasonTargetMet, ReasonConverged}},
		{"low-dirty-256m", 2, 3, []Reason{ReasonTargetMet, ReasonConverged}},
		// Its rounds ran slower (0.8-1.2 s, against 0.5-0.7 s in splice
		// mode), so each found more dirty pages: 4-5k, a plateau just
		// above the target.
		// After round 3 another round promised at most 79 ms off the
		// predicted 409 ms: little gain. (Round 4 found more pages, not
		// fewer: 500 ms predicted after it, not-shrinking.)
		{"low-dirty-256m-read", 2, 4, []Reason{ReasonTargetMet, ReasonConverged, ReasonNotShrinking, ReasonLittleGain}},
		// 64 MiB/s over a 64 MiB hot set: the delta plateaus at 10-17k
		// pages, above the target; pre-copy still halves the freeze.
		// After round 3 another round promised at most 72 ms off the
		// predicted 629 ms (the recorded final dump froze 630 ms): little
		// gain. Round 4 did take 78 ms off.
		{"mid-dirty-256m", 3, 4, []Reason{ReasonNotShrinking, ReasonLittleGain}},
		{"mid-dirty-256m-read", 3, 4, []Reason{ReasonNotShrinking}},
		{"write-all-256m", 2, 2, []Reason{ReasonCannotConverge}},
		{"write-all-256m-read", 2, 2, []Reason{ReasonCannotConverge}},
		{"low-dirty-1g", 3, 4, []Reason{ReasonTargetMet, ReasonConverged}},
		{"low-dirty-1g-read", 3, 4, []Reason{ReasonTargetMet, ReasonConverged}},
	} {
		rec, ok := recs[tc.scenario]
		if !ok {
			t.Errorf("%s: no recording", tc.scenario)
			continue
		}
		delete(recs, tc.scenario)
		k, d := replay(t, tcgConfig(), rec)
		final, oneShot := us(rec.Final.Stats.FrozenUS), us(rec.OneShot.Stats.FrozenUS)
		t.Logf("%s: stopped after round %d: %v; recorded final dump froze %v, one-shot %v",
			tc.scenario, k, d, final.Round(time.Millisecond), oneShot.Round(time.Millisecond))
		if d.Continue || k < tc.minRounds || k > tc.maxRuns || !slices.Contains(tc.reasons, d.Reason) {
			t.Errorf("%s: stopped after round %d (%s); want rounds %d-%d and one of %v",
				tc.scenario, k, d.Reason, tc.minRounds, tc.maxRuns, tc.reasons)
		}
		if ratio := float64(d.PredictedFreeze) / float64(final); ratio < 0.5 || ratio > 2 {
			t.Errorf("%s: predicted %v, %.2f times the recorded final freeze %v", tc.scenario, d.PredictedFreeze, ratio, final)
		}
		// The prediction also tells whether pre-copy paid: it did for
		// every load but the one rewriting everything.
		if paid := d.PredictedFreeze < oneShot; paid == (d.Reason == ReasonCannotConverge) {
			t.Errorf("%s: predicted %v against a one-shot freeze of %v", tc.scenario, d.PredictedFreeze, oneShot)
		}
	}
	for name := range recs {
		t.Errorf("recording %s has no expectation", name)
	}
}

// TestRecordedDirtyRate: from round 3 on, DirtyRate measures what memload
// was told to dirty (plus the ~2-4 MiB every round finds dirty even when
// idle). Round 2 measures over round 1's long interval, in which the count
// of distinct pages saturated at the hot set: it under-states the rate,
// which is why predictions never scale a count down to a shorter time.
func TestRecordedDirtyRate(t *testing.T) {
	for name, rec := range loadRecordings(t) {
		if rec.DirtyMiBps == 0 || rec.Hot == 1 {
			continue // idle has no rate to match; write-all saturates at once
		}
		want := rec.DirtyMiBps * (1 << 20) / PageSize
		rounds := rec.rounds()
		for k := 2; k <= len(rounds); k++ {
			got, ok := DirtyRate(rounds[:k])
			ratio := got / want
			switch {
			case !ok:
				t.Errorf("%s round %d: no rate", name, k)
			case k == 2 && ratio > 0.7:
				t.Errorf("%s round 2: rate %.0f pages/s, %.2f times memload's; want it saturated below", name, got, ratio)
			case k > 2 && (ratio < 0.75 || ratio > 1.6):
				t.Errorf("%s round %d: rate %.0f pages/s, %.2f times memload's %.0f", name, k, got, ratio, want)
			}
		}
	}
}

// TestRecordedFinalPrediction checks the two halves of the prediction
// against the recorded final dump: the pages (PredictFinalPages for the
// moment it started) and their copy time (the model against the dump's
// memdump_time, which in a dump includes memwrite_time).
func TestRecordedFinalPrediction(t *testing.T) {
	for name, rec := range loadRecordings(t) {
		rounds := rec.rounds()
		last := rec.Rounds[len(rounds)-1]
		pages := PredictFinalPages(rounds, ms(rec.Final.StartMS-last.StartMS))
		actual := rec.Final.Stats.PagesWritten
		// Never far below; above where the dump came late and the
		// dirty set had saturated at the hot set (mid-dirty-256m-read).
		if ratio := float64(pages) / float64(actual); ratio < 0.9 || ratio > 2 {
			t.Errorf("%s: predicted %d pages, the final dump wrote %d (%.2f)", name, pages, actual, ratio)
		}
		copyTime, memdump := EstimateCopy(rounds).Time(actual), us(rec.Final.Stats.MemdumpUS)
		if ratio := float64(copyTime) / float64(memdump); ratio < 0.6 || ratio > 2 {
			t.Errorf("%s: copy model says %v for %d pages, the final dump's memdump took %v (%.2f)", name, copyTime, actual, memdump, ratio)
		}
	}
}

// TestRecordedPriorArt shows why the policy does not use LXD's stop rule
// (skipped share of pages_scanned past 70 %): in splice mode CRIU 4.1.1
// scans the whole size of the mappings, 5.6 times the resident pages for
// this Go program, so even an idle container never gets there; our
// resident count (written + skipped) says 99 %.
func TestRecordedPriorArt(t *testing.T) {
	rec := loadRecordings(t)["idle-256m"]
	last := rec.rounds()[len(rec.Rounds)-1]
	lxd := float64(last.PagesSkippedParent) / float64(last.PagesScanned)
	ours := float64(last.PagesSkippedParent) / float64(last.resident())
	if lxd >= 0.7 || ours < 0.95 {
		t.Errorf("idle round %d: skipped share %.2f of pages_scanned, %.2f of resident", last.Index, lxd, ours)
	}
}

// TestRecordedWithoutStarts: an engine that passes no start times gets the
// same decisions on these recordings. Without them the time between rounds
// (here 10-270 ms of reading statistics) is all counted as dirtying time
// of the last round, which errs on the safe side; an engine that works
// between rounds (flattening images) should pass them all the same.
func TestRecordedWithoutStarts(t *testing.T) {
	for name, rec := range loadRecordings(t) {
		rounds := rec.rounds()
		for k := 1; k <= len(rounds); k++ {
			elapsed := rec.Rounds[k-1].end()
			with := Decide(tcgConfig(), rounds[:k], elapsed)
			without := slices.Clone(rounds[:k])
			for i := range without {
				without[i].Start = time.Time{}
			}
			got := Decide(tcgConfig(), without, elapsed)
			if got.Continue != with.Continue || got.Reason != with.Reason ||
				!near(float64(got.PredictedFreeze), float64(with.PredictedFreeze), 0.25) {
				t.Errorf("%s after round %d: %v without start times, %v with", name, k, got, with)
			}
		}
	}
}
