//go:build linux

package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/log"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/settings"
	"github.com/precopy/precopy/snapshotter/pin"
	"github.com/precopy/precopy/snapshotter/pinservice"
)

// checkpointFollowsPause is how soon after a Pause a Checkpoint must come
// for the shim to take the two as one client's checkpoint (ctr, nerdctl,
// the CRI plugin and containerd's Task.Checkpoint send them back to back,
// milliseconds apart) rather than a pause the user held and a checkpoint
// taken later, which must leave the container paused.
const checkpointFollowsPause = 3 * time.Second

// thawDecision is whether a checkpoint may thaw its container right after
// the final dump.
type thawDecision int

const (
	thawNo thawDecision = iota
	thawYes
	// thawIfPinned: the rootfs is writable; thaw if precopyd pins a
	// point-in-time view of it for the client's rw-layer diff.
	thawIfPinned
)

// earlyThaw decides whether this checkpoint of c may thaw the container
// right after its final dump, before the daemon stores the image and
// diffs the writable layer; the returned Thaw says why or why not.
// Callers hold c.mu.
func (c *container) earlyThaw(opts *options.CheckpointOptions) (thawDecision, *precopy.Thaw) {
	t := &precopy.Thaw{}
	if !c.pausedAt.IsZero() {
		t.FrozenAt = c.pausedAt
	}
	no := func(why string) (thawDecision, *precopy.Thaw) {
		t.Reason = why
		return thawNo, t
	}
	mode := c.settings.EarlyThaw
	switch {
	case mode == settings.EarlyThawNever:
		return no("io.precopy.early-thaw is never")
	case opts.Exit:
		return no("the checkpoint stops the container")
	case c.pausedAt.IsZero():
		// A running task (CRIU freezes and thaws it itself) or one paused
		// before this shim's state began.
		return no("the shim did not pause the container for this checkpoint")
	case time.Since(c.pausedAt) > checkpointFollowsPause:
		return no(fmt.Sprintf("the container was paused %s before the checkpoint: a pause the user holds", time.Since(c.pausedAt).Round(time.Millisecond)))
	case mode == settings.EarlyThawForce:
		t.Reason = "io.precopy.early-thaw is force: writes after the dump may reach the rw-layer diff"
		return thawYes, t
	case c.readonlyRootfs:
		t.Reason = "the rootfs is read-only: the rw-layer diff cannot change after the dump"
		return thawYes, t
	case c.upper == "":
		return no("the rootfs is writable and its writable layer is unknown (not one overlay or bind mount): the client's rw-layer diff must see it frozen")
	case c.settings.PrecopydAddress == "":
		return no("the rootfs is writable and no precopyd is configured to pin it: the client's rw-layer diff must see it frozen")
	}
	t.Reason = "the rootfs is writable: thaw once precopyd pins a point-in-time view of it"
	return thawIfPinned, t
}

// pinTimeout bounds the pin call: the container is frozen meanwhile, and
// an unreachable precopyd only costs the early thaw.
const pinTimeout = 5 * time.Second

// pinClient is the shim's client of precopyd at addr, made once and
// kept: a pin happens while a container is frozen, and should not pay
// for a new connection. Create warms it for containers that may pin.
func (s *Service) pinClient(addr string) (*pinservice.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.pins[addr]; ok {
		return c, nil
	}
	c, err := pinservice.Dial(addr)
	if err != nil {
		return nil, err
	}
	if s.pins == nil {
		s.pins = map[string]*pinservice.Client{}
	}
	s.pins[addr] = c
	c.Connect()
	return c, nil
}

// pinRootfs asks precopyd to pin c's writable layer as it is now, frozen
// after the final dump, and says in t whether it did. Callers hold c.mu.
func (s *Service) pinRootfs(ctx context.Context, c *container, t *precopy.Thaw) bool {
	addr := c.settings.PrecopydAddress
	fail := func(err error) bool {
		t.Reason = fmt.Sprintf("the rootfs is writable and precopyd (%s) did not pin it: %v: the client's rw-layer diff must see it frozen", addr, err)
		log.G(ctx).WithError(err).WithField("id", c.id).Info("precopy: no early thaw")
		return false
	}
	if _, err := os.Stat(addr); err != nil {
		return fail(errors.New("no socket"))
	}
	client, err := s.pinClient(addr)
	if err != nil {
		return fail(err)
	}
	pctx, cancel := context.WithTimeout(ctx, pinTimeout)
	defer cancel()
	res, err := client.Pin(pctx, c.upper)
	if err != nil {
		// precopyd may have pinned it all the same (the call timed out
		// after the copy): a pin nobody releases would serve this stale
		// layer to the next checkpoint's diff until its ttl.
		c.pinned = true
		s.unpin(ctx, c, "pin failed")
		return fail(err)
	}
	c.pinned, t.Pinned, t.PinCost = true, true, res.Cost
	t.Reason = "the rootfs is writable and precopyd pinned a point-in-time view of it for the client's rw-layer diff"
	return true
}

// unpin releases c's pin, if it holds one: the client's diff is done, or
// the container is gone. It is kept as held when precopyd cannot be told,
// for the next Pause, Resume or Delete to try again; precopyd drops it
// after its --pin-ttl anyway. Callers hold c.mu.
func (s *Service) unpin(ctx context.Context, c *container, why string) {
	if !c.pinned {
		return
	}
	l := log.G(ctx).WithFields(log.Fields{"id": c.id, "why": why})
	client, err := s.pinClient(c.settings.PrecopydAddress)
	if err == nil {
		// The caller's request may be over (a cancelled Resume): the pin
		// must go all the same.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pinTimeout)
		defer cancel()
		err = client.Unpin(uctx, c.upper)
	}
	if err != nil {
		l.WithError(err).Warn("precopy: unpin the writable layer (precopyd drops it after its pin ttl)")
		return
	}
	c.pinned = false
	l.Debug("precopy: unpinned the writable layer")
}

// writableLayer is the writable dir of a rootfs given as mounts, which
// precopyd pins: see pin.UpperDir. "" unless the rootfs is one mount.
func writableLayer(rootfs []*types.Mount) string {
	if len(rootfs) != 1 {
		return ""
	}
	return pin.UpperDir(rootfs[0].Type, rootfs[0].Source, rootfs[0].Options)
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
