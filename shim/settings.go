package shim

import (
	"time"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/policy"
	"github.com/precopy/precopy/settings"
)

// withFixedCost returns s planning with a final-dump fixed cost of at
// least measured (zero: nothing measured yet).
func withFixedCost(s settings.Settings, measured time.Duration) settings.Settings {
	s.Policy.FinalDumpFixedCost = max(s.Policy.FinalDumpFixedCost, measured)
	return s
}

type policyAdapter policy.Config

func (p policyAdapter) Decide(rounds []precopy.Round, elapsed time.Duration) precopy.Decision {
	in := make([]policy.Round, len(rounds))
	for i, r := range rounds {
		in[i] = policy.Round{
			Index:              r.Index,
			PagesWritten:       r.PagesWritten,
			PagesSkippedParent: r.PagesSkippedParent,
			PagesScanned:       r.PagesScanned,
			Frozen:             r.Frozen,
			Start:              r.Start,
			MemDump:            r.MemDump,
			MemWrite:           r.MemWrite,
			Wall:               r.Wall,
			ImageBytes:         r.ImageBytes,
			Dirtied:            r.Dirtied,
			DirtiedAfter:       r.DirtiedAfter,
		}
	}
	d := policy.Decide(policy.Config(p), in, elapsed)
	return precopy.Decision{Continue: d.Continue, Reason: string(d.Reason), PredictedFreeze: d.PredictedFreeze}
}
