//go:build linux

package shim

import (
	"context"
	"fmt"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/log"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/policy"
)

// checkpointFollowsPause is how soon after a Pause a Checkpoint must come
// for the shim to take the two as one client's checkpoint (ctr, nerdctl,
// the CRI plugin and containerd's Task.Checkpoint send them back to back,
// milliseconds apart) rather than a pause the user held and a checkpoint
// taken later, which must leave the container paused.
const checkpointFollowsPause = 3 * time.Second

// earlyThaw decides whether this checkpoint of c may thaw the container
// right after its final dump, before the daemon stores the image and
// diffs the writable layer; the returned Thaw says why or why not.
// Callers hold c.mu.
func (c *container) earlyThaw(opts *options.CheckpointOptions) (bool, *precopy.Thaw) {
	t := &precopy.Thaw{}
	if !c.pausedAt.IsZero() {
		t.FrozenAt = c.pausedAt
	}
	no := func(why string) (bool, *precopy.Thaw) {
		t.Reason = why
		return false, t
	}
	mode := c.settings.Policy.EarlyThaw
	switch {
	case mode == policy.EarlyThawNever:
		return no("io.precopy.early-thaw is never")
	case opts.Exit:
		return no("the checkpoint stops the container")
	case c.pausedAt.IsZero():
		// A running task (CRIU freezes and thaws it itself) or one paused
		// before this shim's state began.
		return no("the shim did not pause the container for this checkpoint")
	case time.Since(c.pausedAt) > checkpointFollowsPause:
		return no(fmt.Sprintf("the container was paused %s before the checkpoint: a pause the user holds", time.Since(c.pausedAt).Round(time.Millisecond)))
	case mode == policy.EarlyThawForce:
		t.Reason = "io.precopy.early-thaw is force: writes after the dump may reach the rw-layer diff"
		return true, t
	case c.readonlyRootfs:
		t.Reason = "the rootfs is read-only: the rw-layer diff cannot change after the dump"
		return true, t
	}
	return no("the rootfs is writable and no point-in-time view of it is pinned: the client's rw-layer diff must see it frozen")
}

// thawEarly thaws c once its final dump is written: the client's Resume
// that follows is then a no-op. The runc-v2 service's Resume publishes
// TaskResumed and keeps the task status truthful. A failed thaw leaves the
// classic behaviour (the client's Resume thaws). Callers hold c.mu.
func (s *Service) thawEarly(ctx context.Context, c *container, t *precopy.Thaw) {
	if t.Early {
		return
	}
	if _, err := s.TTRPCTaskService.Resume(ctx, &taskAPI.ResumeRequest{ID: c.id}); err != nil {
		t.Reason = fmt.Sprintf("early thaw failed, left to the client's resume: %v", err)
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("precopy: early thaw")
		return
	}
	t.Early, t.ThawedAt = true, time.Now()
	c.thawedEarly = true
	log.G(ctx).WithFields(log.Fields{"id": c.id, "frozen": t.ThawedAt.Sub(t.FrozenAt)}).Info("precopy: thawed after the final dump")
}
