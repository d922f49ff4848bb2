package shim

import (
	"time"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/policy"
)

// The modes say when a container's checkpoints pre-copy: always (where the
// kernel can), never (one-shot, as stock runc-v2), or, as the shim's default
// only, annotated: just the containers whose io.precopy.mode says always.
const (
	ModeAlways    = policy.ModeAlways
	ModeNever     = policy.ModeNever
	ModeAnnotated = policy.ModeAnnotated
)

// Settings are a container's pre-copy settings: the shim's defaults with
// the container's io.precopy.* annotations over them.
type Settings struct {
	Mode   policy.Mode
	Policy policy.Config
	// PrecopydAddress is precopyd's socket, where the shim asks for a
	// pinned view of a writable rootfs for an early thaw ("" = never).
	PrecopydAddress string
}

// DefaultSettings pre-copy every checkpoint with the policy's defaults:
// standard clients cannot ask for it, so it must be on unless turned off.
func DefaultSettings() Settings {
	return Settings{Mode: ModeAlways, Policy: policy.DefaultConfig(), PrecopydAddress: DefaultPrecopydAddress}
}

// With returns s with a container's annotations applied. Annotations
// outside io.precopy. are ignored; a bad or unknown io.precopy.* one is an
// error naming it.
func (s Settings) With(annotations map[string]string) (Settings, error) {
	cfg, err := policy.FromAnnotations(s.Policy, annotations)
	if err != nil {
		return s, err
	}
	out := Settings{Mode: s.Mode, Policy: cfg, PrecopydAddress: s.PrecopydAddress}
	if cfg.Mode != "" {
		out.Mode = cfg.Mode
	}
	if out.Mode == ModeAnnotated {
		// No annotation asked for pre-copy.
		out.Mode = ModeNever
	}
	return out, nil
}

// withFixedCost returns s planning with a final-dump fixed cost of at
// least measured (zero: nothing measured yet).
func (s Settings) withFixedCost(measured time.Duration) Settings {
	s.Policy.FinalDumpFixedCost = max(s.Policy.FinalDumpFixedCost, measured)
	return s
}

// policy is the engine's view of the container's policy.
func (s Settings) policy() precopy.Policy { return policyAdapter(s.Policy) }

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
