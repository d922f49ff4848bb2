//go:build linux

package shim

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/log"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
)

// An early thaw runs the container again right after its final dump,
// before the daemon stores the image; it must never thaw a pause the user
// holds (containerd's TestCheckpointOnPauseStatus: a user's Pause, then a
// Checkpoint, leaves the task paused). What tells the two apart: every
// standard checkpointing client looks at the task right before it pauses
// it (ctr's container.Task and containerd's Task.Checkpoint ask the daemon,
// which asks this shim's State) and pauses only a running task, and sends
// the Checkpoint right after the Pause, with no State between; a user who
// checkpoints a task it paused itself sends State (PAUSED), then the
// Checkpoint, with no Pause. (The State containerd's tasks service sends
// right after a task's Start, for its pid, is no client's look: stateLog
// leaves it out.) So the shim thaws early only when
//
//	(a) its own Pause froze a running task for this checkpoint, and State
//	    answered RUNNING at most stateBeforePause before that Pause came;
//	(b) State did not answer PAUSED between that Pause and the Checkpoint;
//	(c) the Checkpoint came within the pause's window: checkpointFollowsPause
//	    plus what a client's diff of the writable layer may take before it
//	    (ctr diffs between its Pause and its Checkpoint).
const (
	stateBeforePause       = 2 * time.Second
	checkpointFollowsPause = 3 * time.Second
)

// diffRate is what diffAllowance assumes a client's rw-layer diff reads
// per second: containerd's walking differ tars and gzips the layer, bound
// by gzip on data it cannot shrink. Measured with `make bench
// BENCH_NATIVE=1 SCENARIO=rw-layer-256m` (a 256 MiB file of random bytes
// in the layer; the bench's frozen=[rw_diff=…]): 8.4–10.3 s natively on
// this machine under load, 25–31 MiB/s; TCG runs such CPU-bound work 5–10×
// slower. 3 MiB/s covers both, so that a checkpoint's own pause is never
// taken for a user's because its client diffed a large layer first.
const diffRate = 3 << 20

// diffAllowance is how much longer than checkpointFollowsPause a client's
// Checkpoint may follow its Pause, for a writable layer of layerBytes: the
// client's rw-layer diff runs in between. 0 when the size is unknown (0).
func diffAllowance(layerBytes int64) time.Duration {
	if layerBytes <= 0 {
		return 0
	}
	return time.Duration(float64(layerBytes) / diffRate * float64(time.Second))
}

// stateLog is when State last answered RUNNING and PAUSED for a
// container's task.
type stateLog struct {
	mu              sync.Mutex
	running, paused time.Time
	// started is when Start of the task returned, until the State that
	// the daemon sends right after it (for the pid its Start returns:
	// containerd's tasks service Start) came: that one is no client's
	// look at the task before pausing it.
	started time.Time
}

// startQuery bounds how soon after Start the daemon's own State comes.
const startQuery = time.Second

func (l *stateLog) record(st apitask.Status, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.started.IsZero() {
		daemons := at.Sub(l.started) < startQuery
		l.started = time.Time{}
		if daemons {
			return
		}
	}
	switch st {
	case apitask.Status_RUNNING:
		l.running = at
	case apitask.Status_PAUSED:
		l.paused = at
	}
}

// start records that Start of the task returned at.
func (l *stateLog) start(at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started = at
}

func (l *stateLog) lastRunning() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.running
}

// pausedSince says whether State answered PAUSED at t or later.
func (l *stateLog) pausedSince(t time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.paused.Before(t)
}

// pauseRecord is the shim's last Pause of a task, as the early-thaw rule
// reads it.
type pauseRecord struct {
	// arrived is when the Pause came; lookedAt when State last answered
	// RUNNING before that (zero: never).
	arrived, lookedAt time.Time
	// frozeRunning: the Pause found the task running and froze it.
	frozeRunning bool
	// frozenAt is when the Pause returned, the task frozen (zero: no
	// Pause of this shim).
	frozenAt time.Time
	// layerBytes is the writable layer's size at the Pause (0: unknown).
	layerBytes int64
}

// window is how long after the Pause a checkpoint's own Checkpoint comes.
func (p pauseRecord) window() time.Duration {
	return checkpointFollowsPause + diffAllowance(p.layerBytes)
}

// userPause says why the pause before a Checkpoint at now may be one the
// user holds, "" if it is the checkpoint's own.
func (c *container) userPause(now time.Time) string {
	p := c.pause
	if p.frozenAt.IsZero() {
		return "the shim did not pause the container for this checkpoint"
	}
	if why := p.heldByUser(); why != "" {
		return why
	}
	switch {
	case c.states.pausedSince(p.arrived):
		return "a client saw the task paused (State) between the Pause and the checkpoint: a pause the user holds"
	case now.Sub(p.frozenAt) > p.window():
		return fmt.Sprintf("the checkpoint came %s after the pause, later than a client's checkpoint does (%s): a pause the user holds", now.Sub(p.frozenAt).Round(time.Millisecond), p.window())
	}
	return ""
}

// heldByUser says why Pause p may be one the user holds as far as the
// Pause itself shows (rule (a)), "" if it looks like a checkpoint's own.
func (p pauseRecord) heldByUser() string {
	switch {
	case !p.frozeRunning:
		return "the Pause before the checkpoint found the task already paused: a pause the user holds"
	case p.lookedAt.IsZero() || p.arrived.Sub(p.lookedAt) > stateBeforePause:
		return fmt.Sprintf("no client looked at the task (State: running) within %s before the Pause, as checkpointing clients do: a pause the user holds", stateBeforePause)
	}
	return ""
}

// thawDecision is whether a checkpoint may thaw its container right after
// the final dump.
type thawDecision int

const (
	thawNo thawDecision = iota
	thawYes
	// thawIfPinned: the rootfs is writable; thaw if the pinner pins a
	// point-in-time view of it for the client's rw-layer diff.
	thawIfPinned
)

// earlyThaw decides whether a Checkpoint at now (exit: one that stops the
// container) may thaw c right after its final dump, before the daemon
// stores the image and diffs the writable layer; the returned Thaw says
// why or why not. Callers hold c.mu.
func (c *container) earlyThaw(exit bool, now time.Time) (thawDecision, *precopy.Thaw) {
	t := &precopy.Thaw{FrozenAt: c.pause.frozenAt}
	no := func(why string) (thawDecision, *precopy.Thaw) {
		t.Reason = why
		return thawNo, t
	}
	mode := c.settings.EarlyThaw
	switch {
	case mode == settings.EarlyThawNever:
		return no("io.precopy.early-thaw is never")
	case exit:
		return no("the checkpoint stops the container")
	}
	if why := c.userPause(now); why != "" {
		return no(why)
	}
	d, why := c.rootfsThaw()
	t.Reason = why
	return d, t
}

// rootfsThaw is what c's settings and rootfs allow of an early thaw once
// its pause is the checkpoint's own, and why.
func (c *container) rootfsThaw() (thawDecision, string) {
	switch {
	case c.settings.EarlyThaw == settings.EarlyThawForce:
		return thawYes, "io.precopy.early-thaw is force: writes after the dump may reach the rw-layer diff"
	case c.spec.readonlyRootfs:
		return thawYes, "the rootfs is read-only: the rw-layer diff cannot change after the dump"
	case c.upper == "":
		return thawNo, "the rootfs is writable and its writable layer is unknown (not one overlay or bind mount): the client's rw-layer diff must see it frozen"
	case c.pinner == nil:
		return thawNo, "the rootfs is writable and pins are off (io.precopy.pin-limit is 0): the client's rw-layer diff must see it frozen"
	}
	return thawIfPinned, "the rootfs is writable: thaw once its writable layer is pinned"
}

// mayThawEarly says whether the checkpoint Pause p freezes c for may thaw
// early, as far as the Pause can tell: the rest of earlyThaw's rule (a
// Checkpoint that leaves the task running, within the pause's window, no
// client seeing it paused before, the pin) is known at the Checkpoint.
func (c *container) mayThawEarly(p pauseRecord) bool {
	if c.settings.EarlyThaw == settings.EarlyThawNever || p.heldByUser() != "" {
		return false
	}
	d, _ := c.rootfsThaw()
	return d != thawNo
}

// mayThawWritable says whether a checkpoint of c could thaw it early with
// its writable layer still to be diffed: then the layer's size matters.
func (c *container) mayThawWritable() bool {
	switch {
	case c.spec.readonlyRootfs || c.settings.EarlyThaw == settings.EarlyThawNever:
		return false
	case c.settings.EarlyThaw == settings.EarlyThawForce:
		return true
	}
	return c.pinner != nil
}

// layerSize is the bytes of the regular files in the writable layer upper
// ("": 0). Walked while the task runs, before a Pause freezes it.
func layerSize(upper string) int64 {
	if upper == "" {
		return 0
	}
	var n int64
	filepath.WalkDir(upper, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// afterDump runs once a final dump the image will hold is written, the
// container still frozen: it thaws the container if decision allows it
// (pinning a writable layer first), says so in t, and returns whether it
// did. Callers hold c.mu.
func (s *Service) afterDump(ctx context.Context, c *container, decision thawDecision, t *precopy.Thaw) bool {
	if decision == thawIfPinned && s.pinRootfs(ctx, c, t) {
		decision = thawYes
	}
	if decision != thawYes || t.Early {
		return t.Early
	}
	// The runc-v2 service's Resume publishes TaskResumed and keeps the
	// task's status truthful. A failed thaw leaves the classic behaviour:
	// the client's Resume thaws.
	if _, err := s.TTRPCTaskService.Resume(ctx, &taskAPI.ResumeRequest{ID: c.id}); err != nil {
		t.Reason = fmt.Sprintf("early thaw failed, left to the client's resume: %v", err)
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("precopy: early thaw")
		return false
	}
	t.Early, t.ThawedAt = true, s.now()
	log.G(ctx).WithFields(log.Fields{"id": c.id, "frozen": t.ThawedAt.Sub(t.FrozenAt)}).Info("precopy: thawed after the final dump")
	return true
}
