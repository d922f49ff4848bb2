package policy

import (
	"fmt"
	"time"
)

// MaxRoundsLimit is the most rounds a Config may ask for. The recordings
// (testdata/README.md) stop shrinking by round 4; 20 leaves room for loads
// that shrink slowly without letting a typo run pre-copy for ever.
const MaxRoundsLimit = 20

// Config is the stop rule's numbers for one container (settings reads
// them from its annotations). Zero budgets mean no limit.
type Config struct {
	// TargetFreeze is the final-dump freeze to aim for: pre-copy stops as
	// soon as the predicted final freeze is within it.
	TargetFreeze time.Duration
	// MaxRounds is the most pre-dump rounds; 0 turns pre-copy off.
	MaxRounds int
	// FixedRounds, when not 0, runs exactly that many rounds whatever
	// they show (only the memory budget, or a time budget spent, still
	// stops them earlier), as
	// LXD's and P.Haul's fixed iteration counts do: to compare against
	// the adaptive policy, or for a load whose behaviour is known. It
	// overrides MaxRounds, MinSize and the stop rules.
	FixedRounds int
	// TimeBudget bounds the time spent in rounds before the final dump:
	// no round starts once it is spent, nor, from round 2 on, when the
	// round is expected to end past it. 0: no limit.
	TimeBudget time.Duration
	// MemoryBudget bounds the bytes of round images pre-copy holds (the
	// sum of Round.ImageBytes), counting the next round's expected size
	// before starting it. Round 1 holds the whole container, so a larger
	// container is not pre-copied; and as nothing bounds round 2 but the
	// container's size until it has run, one over half the budget makes
	// one round only. 0: no limit.
	MemoryBudget uint64
	// MinSize is the smallest container memory worth pre-copying.
	MinSize uint64
	// MinShrink is the least fraction by which a round must shrink what
	// the final dump would do for it to be worth running: write fewer
	// pages than the round before, and cut the predicted final freeze
	// (Decide's little-gain).
	MinShrink float64
	// FinalDumpFixedCost is the part of the final dump's freeze that does
	// not depend on dirty memory: freezing, the parasite, files, sockets,
	// namespaces, the network lock and unlock, tmpfs contents, conntrack.
	// The policy uses at least the non-memory freeze it measured in the
	// rounds, which a final dump repeats.
	FinalDumpFixedCost time.Duration
}

// DefaultConfig is the policy without per-container settings. The numbers
// come from CRIU 4.1.1 dumps of the memload workload, in the soft-dirty VM
// (qemu TCG, testdata/) and natively on the host (one-shot dumps only, as
// the host kernel has no soft-dirty); see testdata/README.md.
func DefaultConfig() Config {
	return Config{
		// QEMU's default downtime limit, and about twice the fixed cost
		// below, so that it is reachable with a few MiB of delta left.
		TargetFreeze: 300 * time.Millisecond,
		// In the recordings the last round to shrink the delta by 20 %
		// was round 2 or 3 at 256 MiB and round 4 at 1 GiB; round 5 is
		// the one that shows the plateau.
		MaxRounds: 5,
		// Round 1 copies everything: natively ~700 MiB/s (one-shot dumps
		// of 256 MiB and 1 GiB ran at 680-810 MiB/s), so a 16 GiB
		// container's first round takes ~23 s. 30 s still lets it measure
		// its dirty rate in round 2, lets smaller ones run every round,
		// and bounds how long a checkpoint request waits for its dump.
		TimeBudget: 30 * time.Second,
		// Round images live in tmpfs, i.e. node memory, beside the
		// container itself; 4 GiB keeps that bounded. Larger containers
		// opt in with io.precopy.memory-budget.
		MemoryBudget: 4 << 30,
		// A one-shot dump already meets the target when its memory part
		// fits in target minus fixed cost (140 ms): at the 330-810 MiB/s
		// measured natively (the lower figure for a process's first
		// dump) that is 46-113 MiB. Below 64 MiB pre-copy buys nothing
		// but extra rounds, each of which briefly freezes the app too.
		MinSize: 64 << 20,
		// A round that shrinks the delta by less than 20 % saves less than
		// a fifth of the final copy time, no more than the extra round's
		// own freeze costs the app: under TCG rounds after the first froze
		// it 82-221 ms, while 20 % of the 10-17k-page plateau of the
		// mid-dirty load copies in 60-110 ms.
		MinShrink: 0.2,
		// ~140 ms measured natively for a container's network lock and
		// unlock, tmpfs and conntrack, plus CRIU's own non-memory freeze
		// for a one-process task (16-28 ms natively in the one-shot dumps).
		FinalDumpFixedCost: 160 * time.Millisecond,
	}
}

// Validate reports the first setting out of range.
func (c Config) Validate() error {
	switch {
	case c.TargetFreeze <= 0:
		return fmt.Errorf("target freeze %v: must be positive", c.TargetFreeze)
	case c.MaxRounds < 0 || c.MaxRounds > MaxRoundsLimit:
		return fmt.Errorf("max rounds %d: must be from 0 to %d", c.MaxRounds, MaxRoundsLimit)
	case c.FixedRounds < 0 || c.FixedRounds > MaxRoundsLimit:
		return fmt.Errorf("fixed rounds %d: must be from 0 to %d", c.FixedRounds, MaxRoundsLimit)
	case c.TimeBudget < 0:
		return fmt.Errorf("time budget %v: must not be negative", c.TimeBudget)
	case !(c.MinShrink >= 0 && c.MinShrink < 1):
		return fmt.Errorf("min shrink %v: must be at least 0 and below 1", c.MinShrink)
	case c.FinalDumpFixedCost < 0:
		return fmt.Errorf("final dump fixed cost %v: must not be negative", c.FinalDumpFixedCost)
	}
	return nil
}
