package policy

import (
	"fmt"
	"time"
)

// convergedPages is P.Haul's "nothing left" threshold: a round that wrote
// this few pages leaves a final delta too small to chase.
const convergedPages = 64

// Decision is the policy's answer after a round.
type Decision struct {
	Continue bool   `json:"continue"`
	Reason   Reason `json:"reason"`
	// PredictedFreeze is the freeze the policy expects of a final dump
	// started now. After a full round 1 it is an upper bound (every page
	// dirtied again), since no dirty rate is known yet.
	PredictedFreeze time.Duration `json:"predicted_freeze_ns"`
}

func (d Decision) String() string {
	verb := "stop"
	if d.Continue {
		verb = "continue"
	}
	return fmt.Sprintf("%s (%s), predicted final freeze %v", verb, d.Reason, d.PredictedFreeze.Round(time.Millisecond))
}

// Skip says whether to skip pre-copy before any round, given the
// container's memory (its cgroup's usage, say): too small to gain from it,
// too large for the memory budget, or no rounds allowed.
func Skip(cfg Config, memoryBytes uint64) (bool, Reason) {
	switch {
	case cfg.FixedRounds > 0 && (cfg.MemoryBudget == 0 || memoryBytes <= cfg.MemoryBudget):
		return false, ReasonFixedRounds
	case cfg.MaxRounds <= 0:
		return true, ReasonMaxRounds
	case memoryBytes < cfg.MinSize:
		return true, ReasonTooSmall
	case cfg.MemoryBudget > 0 && memoryBytes > cfg.MemoryBudget:
		// Round 1 copies all of it.
		return true, ReasonMemoryBudget
	}
	return false, ReasonMeasuring
}

// Decide says, after the rounds so far, whether to run another one or go
// to the final dump; elapsed is the time since round 1 started. It is
// pure: the same rounds and elapsed give the same decision.
//
// In order, it stops when round 1 found the container too small; when the
// predicted final freeze meets the target (after a full round 1 only if
// even rewriting every page would; an incremental one predicts from its
// own count); when the load rewrote nearly all its memory
// during the last round (its page tables' count, from round 1 on) or
// between two rounds, or dirties faster than CRIU copies (cannot-converge);
// when the rounds stopped shrinking by MinShrink (converged if what is left
// to copy takes less than the fixed cost, not-shrinking otherwise); when
// another round would cut the predicted final freeze by less than
// MinShrink of it (little-gain: from round 2 on); and then on MaxRounds,
// TimeBudget and MemoryBudget. With FixedRounds set it runs that many
// rounds, stopping earlier only on MemoryBudget, or once TimeBudget is
// spent.
func Decide(cfg Config, rounds []Round, elapsed time.Duration) Decision {
	k := len(rounds)
	if cfg.FixedRounds > 0 {
		return decideFixed(cfg, rounds, elapsed)
	}
	if k == 0 {
		if cfg.MaxRounds <= 0 {
			return Decision{Reason: ReasonMaxRounds}
		}
		return Decision{Continue: true, Reason: ReasonMeasuring}
	}
	first, last := rounds[0], rounds[k-1]
	model := EstimateCopy(rounds)
	pages := PredictFinalPages(rounds, TimeUntilFinal(rounds, elapsed))
	fixed, memory := fixedCost(cfg, rounds), model.Time(pages)
	predicted := fixed + memory
	stop := func(r Reason) Decision { return Decision{Reason: r, PredictedFreeze: predicted} }

	// The container's size is what round 1 found resident: all of it
	// written, or, when it dumped against an earlier checkpoint's image
	// (incremental), partly left in that parent.
	if first.resident()*PageSize < cfg.MinSize {
		return stop(ReasonTooSmall)
	}
	if predicted <= cfg.TargetFreeze {
		return stop(ReasonTargetMet)
	}
	keep := 1 - cfg.MinShrink // most a round may write, relative to the one before
	// The load rewrote nearly all its memory during the last round
	// (counted from its page tables): the next round would copy it all
	// again. This is what lets a single round show it.
	if last.DirtiedAfter > 0 && float64(last.Dirtied) >= keep*float64(last.resident()) {
		return stop(ReasonCannotConverge)
	}
	// A dirty rate is known from round 2 on, or after an incremental
	// round 1 that counted what it dirtied.
	rate, measured := DirtyRate(rounds)
	if k >= 2 {
		// Round 1 wrote every resident page: a later round that wrote
		// nearly as many did not shrink at all.
		if float64(last.PagesWritten) >= keep*float64(last.resident()) ||
			(model.PagesPerSecond > 0 && rate >= model.PagesPerSecond) {
			return stop(ReasonCannotConverge)
		}
		if last.PagesWritten <= convergedPages {
			return stop(ReasonConverged)
		}
		if k >= 3 && float64(last.PagesWritten) > keep*float64(rounds[k-2].PagesWritten) {
			if memory <= fixed {
				return stop(ReasonConverged)
			}
			return stop(ReasonNotShrinking)
		}
	}
	// Not after round 1, even an incremental one whose count gives a rate
	// (see dirtyRate): the final dump after one round copies what the load
	// dirtied during all of it, and only a round 2, over the short
	// interval of a round that copies little, comes down to the hot set.
	// A task's first checkpoint gets there (round 1 has no rate); its
	// later ones, whose round 1 copies little more than a later round
	// but takes longer, would otherwise stop short of it and freeze
	// longer than the first (the periodic bench's incremental checkpoints
	// under TCG: 6.4-9.0k final pages after one round against 3.6-6.7k).
	// With the flattens deferred (a leave-running checkpoint of a task
	// checkpointed before) a round 2 costs only its CRIU call.
	if measured && k >= 2 {
		if gain := nextRoundGain(rounds, model, pages, rate); gain < seconds(cfg.MinShrink*predicted.Seconds()) {
			return stop(ReasonLittleGain)
		}
	}
	if k >= cfg.MaxRounds {
		return stop(ReasonMaxRounds)
	}
	if cfg.TimeBudget > 0 && elapsed+nextRoundTime(rounds, model, pages) > cfg.TimeBudget {
		return stop(ReasonTimeBudget)
	}
	if cfg.MemoryBudget > 0 && heldBytes(rounds)+pages*PageSize > cfg.MemoryBudget {
		return stop(ReasonMemoryBudget)
	}
	if k == 1 {
		return Decision{Continue: true, Reason: ReasonMeasuring, PredictedFreeze: predicted}
	}
	return Decision{Continue: true, Reason: ReasonShrinking, PredictedFreeze: predicted}
}

// decideFixed runs cfg.FixedRounds rounds, stopping earlier only for the
// memory budget, which protects the node rather than tunes the dump, and
// once the time budget is spent: a caller's deadline (the kubelet's) sets
// it, and the checkpoint must come before that.
func decideFixed(cfg Config, rounds []Round, elapsed time.Duration) Decision {
	k := len(rounds)
	if k >= cfg.FixedRounds {
		return Decision{Reason: ReasonFixedRounds}
	}
	if k > 0 && cfg.TimeBudget > 0 && elapsed >= cfg.TimeBudget {
		return Decision{Reason: ReasonTimeBudget}
	}
	if k > 0 && cfg.MemoryBudget > 0 {
		pages := rounds[k-1].PagesWritten // the next round copies about as much as the last
		if heldBytes(rounds)+pages*PageSize > cfg.MemoryBudget {
			return Decision{Reason: ReasonMemoryBudget}
		}
	}
	return Decision{Continue: true, Reason: ReasonFixedRounds}
}

// nextRoundGain is how much another round is expected to cut the final
// freeze: a final dump now copies pages; one after the next round copies
// what the load dirties while that round runs (nextRoundTime at rate). The
// rounds' part every copy pays cancels out. Scaling the rate down to a
// shorter round is optimistic (the distinct pages dirtied grow at most
// linearly, so over a shorter time they are at least their share), and so
// is the rate itself after round 2 (measured over round 1's long interval,
// it under-states): the gain is an upper bound, so a round is only
// skipped when even that is small.
//
// It is what ends the rounds when the final freeze is mostly the fixed
// cost and the rounds still shrink, say from 7,700 to 5,700 pages: a round
// of a second or more under TCG to save ~0.1 s of a ~1.2 s freeze. That is
// typical after an incremental round 1 (only the pages dirtied since the
// last checkpoint), whose round 2 already holds little more than the hot
// set.
func nextRoundGain(rounds []Round, model CopyModel, pages uint64, rate float64) time.Duration {
	next := nextRoundTime(rounds, model, pages)
	after := min(rate*next.Seconds(), float64(pages))
	if model.PagesPerSecond <= 0 {
		return 0
	}
	return seconds((float64(pages) - after) / model.PagesPerSecond)
}

// nextRoundTime is how long the next round is expected to take: the last
// round's time outside copying memory (CRIU's start, freezing, the
// parasite) plus copying the pages it will find dirty. Until a dirty rate
// is measured (after a full round 1) the page count is unknown and the
// worst case would end every large container's pre-copy at round 1, so
// round 2 is only held to the budget already spent.
func nextRoundTime(rounds []Round, model CopyModel, pages uint64) time.Duration {
	if _, ok := DirtyRate(rounds); !ok {
		return 0
	}
	last := rounds[len(rounds)-1]
	return max(last.Wall-last.copyTime(), 0) + model.Time(pages)
}

// heldBytes is the round images pre-copy holds.
func heldBytes(rounds []Round) uint64 {
	var n uint64
	for _, r := range rounds {
		n += uint64(max(r.ImageBytes, 0))
	}
	return n
}
