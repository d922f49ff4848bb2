//go:build linux

package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
)

// phase is where a container stands in a checkpoint. Its transitions are
// the methods below, called with the container's mu held:
//
//	                   Pause (pre-copies, freezes)         Checkpoint
//	idle, thawedEarly ────────────────────────────▶ paused ──────────▶ idle, or thawedEarly
//	idle ◀──────────── Resume, Delete, the discard timer ───┘
//	idle ◀──────────── Resume (a no-op), Delete ─── thawedEarly
//
// A Pause that finds the container paused leaves its phase; a Checkpoint
// without a Pause before it (a running task) pre-copies and dumps within
// the call. Orthogonal to the phase, a pin of the writable layer taken for
// an early thaw is held until the client's Resume, the next Pause or
// Delete releases it (pin.go).
type phase int

const (
	// idle: no checkpoint under way; the task runs, or someone else holds
	// it paused.
	idle phase = iota
	// paused: the shim's Pause froze the task and left its rounds (or the
	// report of why there are none) for the Checkpoint to come.
	paused
	// thawedEarly: a checkpoint thawed the task right after its final
	// dump; the client's Resume that ends the checkpoint has nothing left
	// to do.
	thawedEarly
)

func (p phase) String() string {
	return [...]string{"idle", "paused", "thawed early"}[p]
}

// container is precopy's state for one container the shim serves.
type container struct {
	id, bundle, namespace string
	settings              settings.Settings
	spec                  specFacts
	// upper is the writable layer of the rootfs (the overlay upper dir
	// the snapshotter mounted), which a pinner can pin for an early thaw
	// of a writable rootfs; "" when unknown.
	upper  string
	engine *precopy.Engine
	// pinner pins upper; nil when no pin can apply.
	pinner pinner
	// network is what precopy does for the container's network namespace
	// around CRIU (network.go); nil in the host's.
	network *network

	// states and rounds have locks of their own: State and a Resume that
	// interrupts rounds must not wait for a Pause's rounds.
	states stateLog
	rounds roundsInterrupt

	// mu serialises Pause, Checkpoint, Resume, Delete and the discard
	// timer of this container: a second checkpoint waits for the first.
	mu    sync.Mutex
	phase phase
	// pending is what the Pause left for the Checkpoint (paused only);
	// discard is the timer that drops it.
	pending *precopy.Rounds
	discard stopper
	// pause is the shim's last Pause of the task, until a Resume or the
	// Checkpoint after it.
	pause pauseRecord
	// pinned: pinner holds a pin of upper for this container.
	pinned bool
}

// newContainer is the shim's state for the container r creates.
func (s *Service) newContainer(r *taskAPI.CreateTaskRequest, ns string, cs settings.Settings, spec specFacts) *container {
	c := &container{id: r.ID, bundle: r.Bundle, namespace: ns, settings: cs, spec: spec, upper: writableLayer(r.Rootfs)}
	c.engine = s.engineFor(c, &taskRuntime{s: s, c: c})
	if c.upper != "" && !spec.readonlyRootfs && cs.PinLimit > 0 {
		c.pinner = s.layerPinnerFor(c)
	}
	return c
}

// newEngine is the engine for c's checkpoints, with rounds (and, for
// incremental checkpoints, the last checkpoint's memory image) in
// roundsDir.
func newEngine(c *container, rt precopy.Runtime) *precopy.Engine {
	e := precopy.New(rt, c.settings.Policy, string(c.settings.Mode), roundsDir(c.settings.RoundsDir, c.bundle, c.namespace, c.id), log.L.WithField("id", c.id))
	e.Incremental, e.KeepBudget = c.settings.Incremental, c.settings.IncrementalBudget
	return e
}

// roundsDir is where a container's engine keeps its rounds and kept
// image: its bundle (containerd's state dir, a tmpfs on most nodes), or,
// with the config file's rounds-dir (base), <base>/<namespace>/<id>: the
// operator's choice of a filesystem that can shift ranges (ext4, XFS; see
// imagechain's FlattenConsuming) and of disk instead of memory for the
// kept image. Namespace and id are containerd identifiers (one path
// element each, checked at Create).
func roundsDir(base, bundle, ns, id string) string {
	if base == "" {
		return filepath.Join(bundle, "precopy")
	}
	return filepath.Join(base, ns, id)
}

// removeRoundsDir removes a container's dir under the configured rounds
// dir, and its namespace's dir once empty. Nothing removes it otherwise:
// containerd removes the bundle, not this. Without a rounds dir it is a
// no-op (the bundle goes with the container). The namespace and id become
// path elements: they must be containerd identifiers (containerd checks
// them; the shim checks what it joins into a host path it removes).
func removeRoundsDir(base, ns, id string) error {
	if base == "" {
		return nil
	}
	if err := errors.Join(identifiers.Validate(ns), identifiers.Validate(id)); err != nil {
		return fmt.Errorf("rounds dir under %s: %w: %w", base, err, errdefs.ErrInvalidArgument)
	}
	if err := os.RemoveAll(roundsDir(base, "", ns, id)); err != nil {
		return err
	}
	// Another container's rounds may be there: ENOTEMPTY is expected.
	os.Remove(filepath.Join(base, ns))
	return nil
}

// paused records a Pause that froze the task, leaving r for the
// Checkpoint: idle or thawedEarly → paused. The rounds are discarded
// after s.discardAfter, or the early-thaw window if longer, unless a
// Checkpoint, Resume or Delete took them first.
func (s *Service) paused(c *container, r *precopy.Rounds, p pauseRecord) {
	c.phase, c.pending, c.pause = paused, r, p
	after := max(s.discardAfter, p.window())
	c.discard = s.afterFunc(after, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		// A late firing finds other rounds, or none: not its to drop.
		if c.pending == r {
			c.drop(context.Background(), "no checkpoint within "+after.String()+" of the pause")
		}
	})
}

// take hands over the pending rounds, nil when there are none:
// paused → idle; other phases stay.
func (c *container) take() *precopy.Rounds {
	if c.phase != paused {
		return nil
	}
	c.discard.Stop()
	r := c.pending
	c.phase, c.pending, c.discard = idle, nil, nil
	return r
}

// drop discards the pending rounds, if any: paused → idle.
func (c *container) drop(ctx context.Context, why string) {
	r := c.take()
	if r == nil {
		return
	}
	if err := r.Discard(); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("precopy: discard rounds")
	}
	log.G(ctx).WithFields(log.Fields{"id": c.id, "rounds": len(r.Report.Rounds)}).Infof("precopy: rounds discarded: %s", why)
}

// checkpointed ends a checkpoint, which took the pending rounds: → thawedEarly
// if it thawed the task. The Pause before it no longer counts.
func (c *container) checkpointed(thawed bool) {
	c.pause = pauseRecord{}
	if thawed {
		c.phase = thawedEarly
	}
}

// resumed ends whatever was under way: → idle. It says whether a
// checkpoint had thawed the task already.
func (c *container) resumed(ctx context.Context) (wasThawed bool) {
	wasThawed = c.phase == thawedEarly
	c.drop(ctx, "resumed without a checkpoint")
	c.phase, c.pause = idle, pauseRecord{}
	return wasThawed
}

// roundsInterrupt lets a Resume end the rounds a Pause runs, after the
// one in progress, instead of waiting for all of them.
type roundsInterrupt struct {
	mu sync.Mutex
	ch chan struct{}
}

// start returns the channel that interrupts the rounds about to run.
func (ri *roundsInterrupt) start() <-chan struct{} {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	ri.ch = make(chan struct{})
	return ri.ch
}

// end forgets the channel of rounds that ended.
func (ri *roundsInterrupt) end() {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	ri.ch = nil
}

// interrupt ends running rounds after the one in progress, if any.
func (ri *roundsInterrupt) interrupt() {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	if ri.ch != nil {
		close(ri.ch)
		ri.ch = nil
	}
}
