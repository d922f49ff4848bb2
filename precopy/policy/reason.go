package policy

// Reason says why the policy stopped pre-copy, or why it goes on.
type Reason string

// Reasons to go on.
const (
	// ReasonMeasuring: fewer than two rounds, so no dirty rate is known
	// yet; the next round measures it.
	ReasonMeasuring Reason = "measuring"
	// ReasonShrinking: the predicted final freeze is above the target and
	// the rounds are still shrinking.
	ReasonShrinking Reason = "shrinking"
	// ReasonFixedRounds: io.precopy.rounds asks for more rounds (going
	// on), or for as many as ran (stopping).
	ReasonFixedRounds Reason = "fixed-rounds"
)

// Reasons to stop.
const (
	// ReasonTargetMet: the predicted final freeze is within the target.
	ReasonTargetMet Reason = "target-met"
	// ReasonConverged: the rounds stopped shrinking, or have next to nothing
	// left to copy, and copying memory is no longer the larger part of the
	// final freeze: more rounds cannot bring it down, even though it is
	// above the target (a target below the fixed cost is never met).
	ReasonConverged Reason = "converged"
	// ReasonNotShrinking: the rounds stopped shrinking while copying memory
	// still dominates the final freeze: the load re-dirties its working set
	// about as fast as a round copies it.
	ReasonNotShrinking Reason = "not-shrinking"
	// ReasonLittleGain: the rounds still shrink, but another one would cut
	// the predicted final freeze by less than MinShrink of it: what is
	// left is mostly the final dump's fixed cost, or the load re-dirties
	// during a round about what the round would take off.
	ReasonLittleGain Reason = "little-gain"
	// ReasonCannotConverge: the load dirties pages at least as fast as CRIU
	// copies them, or rewrote nearly all its memory between two rounds;
	// further rounds only repeat the first.
	ReasonCannotConverge Reason = "cannot-converge"
	// ReasonMaxRounds: the configured number of rounds is done (or zero).
	ReasonMaxRounds Reason = "max-rounds"
	// ReasonTimeBudget: another round would end past the time budget.
	ReasonTimeBudget Reason = "time-budget"
	// ReasonMemoryBudget: the round images would outgrow the memory budget.
	ReasonMemoryBudget Reason = "memory-budget"
	// ReasonTooSmall: the container's memory is below the size worth
	// pre-copying: a one-shot dump is about as short.
	ReasonTooSmall Reason = "too-small"
	// ReasonInterrupted: a Resume overtook the Pause running the rounds;
	// the engine, not Decide, stops on it, after the round in progress.
	ReasonInterrupted Reason = "interrupted"
)
