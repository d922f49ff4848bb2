package policy

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDecideReasons runs Decide on synthetic histories (synth_test.go: a
// 1 GiB container copied at 100k pages/s + 10 ms a round, 200 ms of
// overhead a round) chosen to hit each reason.
func TestDecideReasons(t *testing.T) {
	def := DefaultConfig() // fixed cost 160 ms, target 300 ms
	with := func(f func(*Config)) Config { c := def; f(&c); return c }
	for _, tc := range []struct {
		name    string
		cfg     Config
		written []uint64
		// extra is time spent after the last round, before Decide.
		extra time.Duration
		want  Reason
		cont  bool
	}{
		{"no rounds yet", def, nil, 0, ReasonMeasuring, true},
		{"no rounds allowed", with(func(c *Config) { c.MaxRounds = 0 }), nil, 0, ReasonMaxRounds, false},
		// One round measures no dirty rate; the worst case is far off.
		{"round 1 measures", def, []uint64{synthResident}, 0, ReasonMeasuring, true},
		{"round 1 too small", def, []uint64{10000}, 0, ReasonTooSmall, false},
		// 20000 pages (78 MiB): even if all are dirtied again, the final
		// dump takes 160+10+200 ms, within a 400 ms target.
		{"round 1 worst case meets target", with(func(c *Config) { c.TargetFreeze = 400 * time.Millisecond }),
			[]uint64{20000}, 0, ReasonTargetMet, false},
		{"delta small: target met", def, []uint64{synthResident, 2000}, 0, ReasonTargetMet, false},
		{"delta large, shrinking", def, []uint64{synthResident, 30000}, 0, ReasonShrinking, true},
		// Round 3 took 0.51 s and the load dirtied 37k pages/s in round
		// 2's 0.81 s: another round would leave ~19k of 30k pages, 111 ms
		// off a predicted 470 ms, more than a fifth.
		{"still shrinking, another round pays", with(func(c *Config) { c.TargetFreeze = 100 * time.Millisecond }),
			[]uint64{synthResident, 60000, 30000}, 0, ReasonShrinking, true},
		// Shrinking by 20 %, but at 48k pages/s another round of 0.45 s
		// would leave ~21.6k of 24k pages: 24 ms off a predicted 410 ms.
		{"shrinking, another round gains little", def, []uint64{synthResident, 30000, 24000}, 0, ReasonLittleGain, false},
		{"not shrinking, memory dominates", def, []uint64{synthResident, 30000, 28000}, 0, ReasonNotShrinking, false},
		{"grew", def, []uint64{synthResident, 20000, 25000}, 0, ReasonNotShrinking, false},
		// A target under the fixed cost is never met; once the rounds
		// stop shrinking and the copy is the smaller part, stop.
		{"plateau under fixed cost: converged", with(func(c *Config) { c.TargetFreeze = 100 * time.Millisecond }),
			[]uint64{synthResident, 3000, 2900}, 0, ReasonConverged, false},
		{"nothing left: converged", with(func(c *Config) { c.TargetFreeze = 100 * time.Millisecond }),
			[]uint64{synthResident, 50}, 0, ReasonConverged, false},
		// Round 2 rewrote 95 % of the memory round 1 copied.
		{"rewrites everything: cannot converge", def, []uint64{synthResident, 250000}, 0, ReasonCannotConverge, false},
		// Round 2 took 0.5 s; round 3 found 60000 pages dirtied in it:
		// 120k pages/s, more than the 100k CRIU copies.
		{"dirties faster than copied: cannot converge", def, []uint64{synthResident, 30000, 60000}, 0, ReasonCannotConverge, false},
		{"max rounds", with(func(c *Config) { c.MaxRounds = 2 }), []uint64{synthResident, 30000}, 0, ReasonMaxRounds, false},
		{"max rounds 1", with(func(c *Config) { c.MaxRounds = 1 }), []uint64{synthResident}, 0, ReasonMaxRounds, false},
		// Round 1 took 2.8 s, past a 2 s budget.
		{"time budget spent in round 1", with(func(c *Config) { c.TimeBudget = 2 * time.Second }),
			[]uint64{synthResident}, 0, ReasonTimeBudget, false},
		// 3.34 s spent; the next round should take ~0.5 s.
		{"next round would overrun", with(func(c *Config) { c.TimeBudget = 3500 * time.Millisecond }),
			[]uint64{synthResident, 30000}, 0, ReasonTimeBudget, false},
		{"next round fits", with(func(c *Config) { c.TimeBudget = 4 * time.Second }),
			[]uint64{synthResident, 30000}, 0, ReasonShrinking, true},
		{"no time budget", with(func(c *Config) { c.TimeBudget = 0 }), []uint64{synthResident, 30000}, time.Hour, ReasonShrinking, true},
		// 1 GiB held; round 2 could be another 1 GiB.
		{"memory budget, round 2 unbounded", with(func(c *Config) { c.MemoryBudget = 1536 << 20 }),
			[]uint64{synthResident}, 0, ReasonMemoryBudget, false},
		// 1 GiB + 117 MiB held, ~117 MiB more expected.
		{"memory budget, next delta", with(func(c *Config) { c.MemoryBudget = 1200 << 20 }),
			[]uint64{synthResident, 30000}, 0, ReasonMemoryBudget, false},
		{"no memory budget", with(func(c *Config) { c.MemoryBudget = 0 }), []uint64{synthResident}, 0, ReasonMeasuring, true},
	} {
		rounds, elapsed := synth(tc.written...)
		d := Decide(tc.cfg, rounds, elapsed+tc.extra)
		if d.Reason != tc.want || d.Continue != tc.cont {
			t.Errorf("%s: Decide = %v, want continue=%v (%s)", tc.name, d, tc.cont, tc.want)
		}
		if len(rounds) > 0 && d.PredictedFreeze < tc.cfg.FinalDumpFixedCost {
			t.Errorf("%s: predicted final freeze %v below the fixed cost", tc.name, d.PredictedFreeze)
		}
	}
}

// TestDecideIncrementalRoundOne: a first round that dumped against an
// earlier checkpoint's image writes only what changed since; the
// container is not too small for that, and without a count of what it
// dirtied during the round (the engine could not read the page tables)
// its full size still bounds the prediction until a second round
// measures the dirty rate.
func TestDecideIncrementalRoundOne(t *testing.T) {
	rounds, elapsed := synth(10000)
	rounds[0].PagesSkippedParent = synthResident - 10000
	d := Decide(DefaultConfig(), rounds, elapsed)
	if !d.Continue || d.Reason != ReasonMeasuring {
		t.Errorf("Decide = %v, want another round to measure the dirty rate", d)
	}
	if worst := EstimateCopy(rounds).Time(synthResident); d.PredictedFreeze < worst {
		t.Errorf("predicted %v, below copying all %d resident pages (%v)", d.PredictedFreeze, synthResident, worst)
	}
}

// TestDecideAfterIncrementalRoundOne: after a round 1 that dumped against
// the last checkpoint's image (27,500 pages written, the rest in the
// parent), round 2 already finds little more than the hot set. Under TCG
// the final dump's fixed cost was measured at ~0.9 s: a third round would
// take ~30 ms off a ~1 s freeze, so the rounds stop there (the periodic
// bench's incremental checkpoints ran rounds 3 and 4 of 0.8-1.6 s each for
// it).
func TestDecideAfterIncrementalRoundOne(t *testing.T) {
	cfg := DefaultConfig()
	cfg.FinalDumpFixedCost = 900 * time.Millisecond
	rounds, elapsed := synth(27500, 7710)
	rounds[0].PagesSkippedParent = synthResident - 27500
	d := Decide(cfg, rounds, elapsed)
	if d.Continue || d.Reason != ReasonLittleGain {
		t.Errorf("Decide = %v, want a stop for little gain", d)
	}
}

// TestDecideCountedIncrementalRoundOne: an incremental round 1 that
// counted the pages dirtied during it has a dirty rate, so its prediction
// is the count's, not every resident page; but it goes on to round 2 as a
// full round 1 does, even where another round gains little of a freeze
// that is mostly the fixed cost. Shaped on the periodic bench's
// incremental checkpoints under TCG (~27,600 pages written, ~4,000
// pages/s dirtied, a final dump's fixed cost of ~0.9 s), which stopped
// after round 1 with 6.4-9.0k pages for the final dump, where the task's
// first checkpoint had come down to 3.6-6.7k in rounds 3-4.
// TestDecideAfterIncrementalRoundOne has round 2 end it.
func TestDecideCountedIncrementalRoundOne(t *testing.T) {
	counted := func(written, dirtied uint64) ([]Round, time.Duration) {
		rounds, elapsed := synth(written)
		rounds[0].PagesSkippedParent = synthResident - written
		rounds[0].Dirtied, rounds[0].DirtiedAfter = dirtied, rounds[0].Wall
		return rounds, elapsed
	}
	cfg := DefaultConfig()
	cfg.FinalDumpFixedCost = 900 * time.Millisecond
	rounds, elapsed := counted(27600, 2000) // 4,100 pages/s over the 486 ms round
	d := Decide(cfg, rounds, elapsed)
	if !d.Continue || d.Reason != ReasonMeasuring {
		t.Errorf("quiet load, TCG fixed cost: Decide = %v, want round 2", d)
	}
	if worst := EstimateCopy(rounds).Time(synthResident); d.PredictedFreeze >= worst {
		t.Errorf("predicted %v, want the count's prediction, not every resident page (%v)", d.PredictedFreeze, worst)
	}
	rounds, elapsed = counted(150000, 20000)
	if d := Decide(DefaultConfig(), rounds, elapsed); !d.Continue {
		t.Errorf("busier load, default fixed cost: Decide = %v, want round 2", d)
	}
	// What a round 1 count still stops on: a load that rewrote nearly
	// all it holds during the round.
	rounds, elapsed = counted(27600, synthResident)
	if d := Decide(cfg, rounds, elapsed); d.Continue || d.Reason != ReasonCannotConverge {
		t.Errorf("load rewriting everything: Decide = %v, want cannot-converge", d)
	}
}

func TestDecideIsPure(t *testing.T) {
	rounds, elapsed := synth(synthResident, 30000, 24000)
	before := slices.Clone(rounds)
	a := Decide(DefaultConfig(), rounds, elapsed)
	b := Decide(DefaultConfig(), rounds, elapsed)
	if a != b || !slices.Equal(rounds, before) {
		t.Fatalf("Decide changed its input or its answer: %v then %v", a, b)
	}
}

// TestDecidePredictionTracksDelta: the prediction after a round is about
// the final dump of the pages that round found dirty.
func TestDecidePredictionTracksDelta(t *testing.T) {
	rounds, elapsed := synth(synthResident, 30000)
	d := Decide(DefaultConfig(), rounds, elapsed)
	// 30000 pages over round 1's 2.83 s (the dirtying time the rate was
	// measured on, longer than round 2's own): 30000 pages again.
	want := 160*time.Millisecond + synthPerRound + 300*time.Millisecond
	if !near(float64(d.PredictedFreeze), float64(want), 0.001) {
		t.Errorf("predicted %v, want %v", d.PredictedFreeze, want)
	}
}

func TestSkip(t *testing.T) {
	def := DefaultConfig()
	off := def
	off.MaxRounds = 0
	unlimited := def
	unlimited.MemoryBudget = 0
	for _, tc := range []struct {
		name   string
		cfg    Config
		memory uint64
		skip   bool
		reason Reason
	}{
		{"default size", def, 1 << 30, false, ReasonMeasuring},
		{"at the minimum", def, def.MinSize, false, ReasonMeasuring},
		{"below the minimum", def, def.MinSize - 1, true, ReasonTooSmall},
		{"above the memory budget", def, def.MemoryBudget + 1, true, ReasonMemoryBudget},
		{"no memory budget", unlimited, 64 << 30, false, ReasonMeasuring},
		{"rounds off", off, 1 << 30, true, ReasonMaxRounds},
	} {
		skip, reason := Skip(tc.cfg, tc.memory)
		if skip != tc.skip || reason != tc.reason {
			t.Errorf("%s: Skip = %v, %s; want %v, %s", tc.name, skip, reason, tc.skip, tc.reason)
		}
	}
}

func TestDecisionString(t *testing.T) {
	d := Decision{Reason: ReasonTargetMet, PredictedFreeze: 276400 * time.Microsecond}
	if got, want := d.String(), "stop (target-met), predicted final freeze 276ms"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	d.Continue, d.Reason = true, ReasonShrinking
	if got := d.String(); !strings.HasPrefix(got, "continue (shrinking)") {
		t.Errorf("String = %q", got)
	}
}

func TestDefaultConfigIsValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Config){
		func(c *Config) { c.TargetFreeze = 0 },
		func(c *Config) { c.MaxRounds = -1 },
		func(c *Config) { c.MaxRounds = MaxRoundsLimit + 1 },
		func(c *Config) { c.TimeBudget = -time.Second },
		func(c *Config) { c.MinShrink = 1 },
		func(c *Config) { c.MinShrink = -0.1 },
		func(c *Config) { c.FinalDumpFixedCost = -time.Millisecond },
		func(c *Config) { c.FixedRounds = MaxRoundsLimit + 1 },
	}
	for i, f := range bad {
		c := DefaultConfig()
		f(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("bad config %d (%+v) validated", i, c)
		}
	}
}

// A load that rewrote nearly all its memory while round 1 ran will not
// converge: the policy says so after one round, from the page tables'
// count, instead of running a second round to find out.
func TestDecideCannotConvergeAfterOneRound(t *testing.T) {
	cfg := DefaultConfig()
	round := Round{Index: 1, PagesWritten: 65536, MemDump: time.Second, MemWrite: time.Second,
		Wall: 3 * time.Second, Start: time.Unix(100, 0)}
	rewrote := round
	rewrote.Dirtied, rewrote.DirtiedAfter = 60000, 3*time.Second
	if d := Decide(cfg, []Round{rewrote}, 3*time.Second); d.Continue || d.Reason != ReasonCannotConverge {
		t.Errorf("rewrote 92%% during round 1: %v, want cannot-converge", d)
	}
	calm := round
	calm.Dirtied, calm.DirtiedAfter = 2000, 3*time.Second
	if d := Decide(cfg, []Round{calm}, 3*time.Second); !d.Continue {
		t.Errorf("rewrote 3%% during round 1: %v, want another round", d)
	}
	if d := Decide(cfg, []Round{round}, 3*time.Second); !d.Continue {
		t.Errorf("no count: %v, want another round", d)
	}
}

func TestDecideFixedRounds(t *testing.T) {
	cfg := DefaultConfig()
	cfg.FixedRounds = 3
	cfg.MinSize = 1 << 40 // adaptive rules would stop at once: too small
	if skip, why := Skip(cfg, 1<<20); skip {
		t.Fatalf("Skip with fixed rounds: %v", why)
	}
	// Rounds that converged at once: the adaptive policy would stop.
	round := func(i int) Round {
		return Round{Index: i, PagesWritten: 10, PagesSkippedParent: 1000, Wall: time.Second, Start: time.Unix(int64(i), 0)}
	}
	var rounds []Round
	for i := 1; i <= 3; i++ {
		d := Decide(cfg, rounds, time.Duration(i)*time.Second)
		if !d.Continue || d.Reason != ReasonFixedRounds {
			t.Fatalf("after %d rounds: %v, want continue (fixed-rounds)", i-1, d)
		}
		rounds = append(rounds, round(i))
	}
	if d := Decide(cfg, rounds, 3*time.Second); d.Continue || d.Reason != ReasonFixedRounds {
		t.Fatalf("after 3 rounds: %v, want stop (fixed-rounds)", d)
	}
	cfg.MemoryBudget = 4096 * 5 // the next round would not fit
	rounds[0].ImageBytes = 4096 * 5
	if d := Decide(cfg, rounds[:1], time.Second); d.Continue || d.Reason != ReasonMemoryBudget {
		t.Fatalf("over the memory budget: %v, want stop (memory-budget)", d)
	}
	// A caller's deadline became the time budget: spent, no more rounds.
	cfg.MemoryBudget, cfg.TimeBudget = 0, 2*time.Second
	if d := Decide(cfg, rounds[:1], 2*time.Second); d.Continue || d.Reason != ReasonTimeBudget {
		t.Fatalf("time budget spent: %v, want stop (time-budget)", d)
	}
	if d := Decide(cfg, rounds[:1], time.Second); !d.Continue {
		t.Fatalf("time budget left: %v, want another round", d)
	}
}
