package policy

import (
	"math"
	"testing"
	"time"
)

func near(got, want, tol float64) bool { return math.Abs(got-want) <= tol*math.Abs(want) }

func TestEstimateCopyRecoversLine(t *testing.T) {
	rounds, _ := synth(synthResident, 30000, 5000, 4000)
	m := EstimateCopy(rounds)
	if !near(m.PagesPerSecond, synthBandwidth, 0.001) || !near(float64(m.PerRound), float64(synthPerRound), 0.01) {
		t.Fatalf("EstimateCopy = %+v, want %d pages/s + %v per round", m, synthBandwidth, synthPerRound)
	}
	if got, want := m.Time(100000), synthPerRound+time.Second; !near(float64(got), float64(want), 0.001) {
		t.Errorf("Time(100000) = %v, want %v", got, want)
	}
	if got := Bandwidth(rounds); got != m.PagesPerSecond {
		t.Errorf("Bandwidth = %v, want the model's %v", got, m.PagesPerSecond)
	}
}

func TestEstimateCopyFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rounds []Round
		want   CopyModel
	}{
		{"none", nil, CopyModel{}},
		{"one round: ratio", []Round{{PagesWritten: 1000, MemDump: 4 * time.Millisecond, MemWrite: 6 * time.Millisecond}},
			CopyModel{PagesPerSecond: 100000}},
		// A load that rewrites everything: sizes alike, no line to fit.
		{"same sizes: ratio of sums", []Round{
			{PagesWritten: 1000, MemDump: 10 * time.Millisecond},
			{PagesWritten: 1100, MemDump: 30 * time.Millisecond},
		}, CopyModel{PagesPerSecond: 2100 / 0.040}},
		// A small round slower than a big one (noise): no negative slope.
		{"negative slope: ratio", []Round{
			{PagesWritten: 1000, MemDump: 100 * time.Millisecond},
			{PagesWritten: 3000, MemDump: 50 * time.Millisecond},
		}, CopyModel{PagesPerSecond: 4000 / 0.150}},
		{"no memory times: wall", []Round{{PagesWritten: 1000, Wall: 20 * time.Millisecond}},
			CopyModel{PagesPerSecond: 50000}},
		{"nothing written: per-round only", []Round{{MemDump: 4 * time.Millisecond}, {MemDump: 6 * time.Millisecond}},
			CopyModel{PerRound: 5 * time.Millisecond}},
	} {
		got := EstimateCopy(tc.rounds)
		if got.PerRound != tc.want.PerRound || !near(got.PagesPerSecond, tc.want.PagesPerSecond, 1e-9) {
			t.Errorf("%s: EstimateCopy = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestDirtyRate(t *testing.T) {
	if _, ok := DirtyRate([]Round{{PagesWritten: synthResident}}); ok {
		t.Error("DirtyRate of one round: ok, want no rate (round 1 writes everything)")
	}
	start := synthStart
	// The interval is start to start: round 1's own writing time counts,
	// and so does anything the engine did between the rounds.
	withStarts := []Round{
		{PagesWritten: synthResident, Start: start, Wall: 3 * time.Second},
		{PagesWritten: 8000, Start: start.Add(4 * time.Second), Wall: time.Second},
	}
	if got, ok := DirtyRate(withStarts); !ok || got != 2000 {
		t.Errorf("DirtyRate with starts = %v, %v; want 2000 pages/s over the 4 s between starts", got, ok)
	}
	withoutStarts := []Round{{PagesWritten: synthResident, Wall: 4 * time.Second}, {PagesWritten: 8000, Wall: time.Second}}
	if got, ok := DirtyRate(withoutStarts); !ok || got != 2000 {
		t.Errorf("DirtyRate without starts = %v, %v; want 2000 pages/s over round 1's wall time", got, ok)
	}
}

// TestDirtyRateIncrementalRoundOne: a round 1 that dumped against the last
// checkpoint's image measures the rate itself, from the pages counted
// dirty right after it; a full round 1 with the same count does not (the
// stop rules after it were validated on rates from round 2), nor does an
// incremental one whose count failed.
func TestDirtyRateIncrementalRoundOne(t *testing.T) {
	incremental := Round{PagesWritten: 27000, PagesSkippedParent: 235000, Dirtied: 6000, DirtiedAfter: 2 * time.Second}
	if got, ok := DirtyRate([]Round{incremental}); !ok || got != 3000 {
		t.Errorf("DirtyRate after an incremental round 1 = %v, %v; want 3000 pages/s (6000 over 2 s)", got, ok)
	}
	full := incremental
	full.PagesWritten, full.PagesSkippedParent = synthResident, 0
	if _, ok := DirtyRate([]Round{full}); ok {
		t.Error("DirtyRate after a full round 1 with a count: ok, want no rate")
	}
	uncounted := incremental
	uncounted.Dirtied, uncounted.DirtiedAfter = 0, 0
	if _, ok := DirtyRate([]Round{uncounted}); ok {
		t.Error("DirtyRate after an incremental round 1 without a count: ok, want no rate")
	}
}

func TestTimeUntilFinal(t *testing.T) {
	rounds, end := synth(synthResident, 5000)
	last := rounds[1]
	if got := TimeUntilFinal(rounds, end); got != last.Wall {
		t.Errorf("right after the last round: %v, want its wall time %v", got, last.Wall)
	}
	if got := TimeUntilFinal(rounds, end+time.Second); got != last.Wall+time.Second {
		t.Errorf("1 s after the last round: %v, want %v", got, last.Wall+time.Second)
	}
	for i := range rounds {
		rounds[i].Start = time.Time{}
	}
	if got := TimeUntilFinal(rounds, end+time.Second); got != last.Wall+time.Second {
		t.Errorf("without starts, 1 s after: %v, want %v", got, last.Wall+time.Second)
	}
	if got := TimeUntilFinal(rounds, 0); got != last.Wall {
		t.Errorf("without starts or elapsed: %v, want the last wall time %v", got, last.Wall)
	}
}

func TestPredictFinalPages(t *testing.T) {
	start := synthStart
	rounds := []Round{
		{PagesWritten: 10000, Start: start, Wall: 2 * time.Second},
		{PagesWritten: 4000, PagesSkippedParent: 6000, Start: start.Add(2 * time.Second), Wall: time.Second},
	}
	for _, tc := range []struct {
		until time.Duration
		want  uint64
	}{
		// Shorter than the 2 s measured: never scaled down, since the
		// distinct pages over 1 s may be nearly all of those over 2 s.
		{time.Second, 4000},
		{2 * time.Second, 4000},
		{3 * time.Second, 6000},
		{10 * time.Second, 10000}, // capped at the resident set
	} {
		if got := PredictFinalPages(rounds, tc.until); got != tc.want {
			t.Errorf("PredictFinalPages(until %v) = %d, want %d", tc.until, got, tc.want)
		}
	}
	if got := PredictFinalPages(rounds[:1], time.Second); got != 10000 {
		t.Errorf("after one round: %d, want the worst case, every resident page", got)
	}
	// An incremental round 1 that counted 3000 pages dirtied over 1.5 s:
	// scaled up to a longer time, never down.
	incremental := []Round{{PagesWritten: 4000, PagesSkippedParent: 6000, Start: start, Wall: time.Second, Dirtied: 3000, DirtiedAfter: 1500 * time.Millisecond}}
	for until, want := range map[time.Duration]uint64{time.Second: 3000, 3 * time.Second: 6000, time.Minute: 10000} {
		if got := PredictFinalPages(incremental, until); got != want {
			t.Errorf("after an incremental round 1, PredictFinalPages(until %v) = %d, want %d", until, got, want)
		}
	}
	if got := PredictFinalPages(nil, time.Second); got != 0 {
		t.Errorf("no rounds: %d", got)
	}
}

func TestPredictFinalFreeze(t *testing.T) {
	rounds, end := synth(synthResident, 20000)
	cfg := DefaultConfig()
	// 20000 pages at 100k pages/s + 10 ms, on top of the fixed cost.
	want := cfg.FinalDumpFixedCost + synthPerRound + 200*time.Millisecond
	if got := PredictFinalFreeze(cfg, rounds, TimeUntilFinal(rounds, end)); !near(float64(got), float64(want), 0.001) {
		t.Errorf("PredictFinalFreeze = %v, want %v", got, want)
	}
	// A round that froze the task for 400 ms besides copying shows the
	// final dump cannot take less: that overrides the configured cost.
	for i := range rounds {
		rounds[i].Frozen = rounds[i].MemDump + 400*time.Millisecond
	}
	want += 400*time.Millisecond - cfg.FinalDumpFixedCost
	if got := PredictFinalFreeze(cfg, rounds, TimeUntilFinal(rounds, end)); !near(float64(got), float64(want), 0.001) {
		t.Errorf("PredictFinalFreeze after slow freezes = %v, want %v", got, want)
	}
}
