//go:build linux

package shim

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/log"

	"github.com/precopy/precopy/precopy"
)

// pinner pins a container's writable layer (the overlay upper dir) as it
// is now and keeps a point-in-time view of it for the client's rw-layer
// diff until Unpin. A pin it refuses (the layer too large, say) is an
// error saying why.
type pinner interface {
	Pin(ctx context.Context, upper string) (pinResult, error)
	Unpin(ctx context.Context, upper string) error
}

// pinResult is what a pin holds and cost.
type pinResult struct {
	// Bytes and Files are the layer's size (0 when the pinner does not
	// say); Cost is what pinning it took, inside the frozen window; Where
	// names the pinner.
	Bytes int64
	Files int
	Cost  time.Duration
	Where string
}

// pinTimeout bounds a pin or unpin call: the container is frozen during a
// pin, and an unreachable pinner only costs the early thaw.
const pinTimeout = 5 * time.Second

// layerPinnerFor is the pinner of c's writable layer: precopyd's, if one
// is configured, for a layer of its snapshotter, else the shim's own.
func (s *Service) layerPinnerFor(c *container) pinner {
	p := &layerPinner{}
	if addr := c.settings.PrecopydAddress; addr != "" {
		p.pinners = append(p.pinners, s.precopydPinner(addr))
	}
	p.pinners = append(p.pinners, s.newLocalPinner(c.bundle, c.settings.PinLimit))
	return p
}

// precopydPinner is the pinner at precopyd address addr, made once and
// kept: a pin happens while a container is frozen, and should not pay for
// a new connection.
func (s *Service) precopydPinner(addr string) pinner {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pinners[addr]
	if !ok {
		p = s.newPinner(addr)
		s.pinners[addr] = p
	}
	return p
}

// pinRootfs pins c's writable layer as it is now, frozen after the final
// dump, and says in t whether it did. Callers hold c.mu.
func (s *Service) pinRootfs(ctx context.Context, c *container, t *precopy.Thaw) bool {
	pctx, cancel := context.WithTimeout(ctx, pinTimeout)
	defer cancel()
	res, err := c.pinner.Pin(pctx, c.upper)
	if err != nil {
		// The pinner may have pinned it all the same (the call timed out
		// after the copy): a pin nobody releases would serve this stale
		// layer to the next checkpoint's diff.
		c.pinned = true
		s.unpin(ctx, c, "pin failed")
		t.Reason = fmt.Sprintf("the rootfs is writable and pinning it failed: %v: the client's rw-layer diff must see it frozen", err)
		log.G(ctx).WithError(err).WithField("id", c.id).Info("precopy: no early thaw")
		return false
	}
	c.pinned = true
	t.Pinned, t.PinWhere, t.PinBytes, t.PinFiles, t.PinCost = true, res.Where, res.Bytes, res.Files, res.Cost
	t.Reason = "the rootfs is writable and a point-in-time view of it is pinned for the client's rw-layer diff"
	return true
}

// unpin releases c's pin, if it holds one: the client's diff is done, or
// the container is gone. It is kept as held when the pinner cannot be
// told, for the next Pause, Resume or Delete to try again (precopyd drops
// it after its --pin-ttl anyway). Callers hold c.mu.
func (s *Service) unpin(ctx context.Context, c *container, why string) {
	if !c.pinned {
		return
	}
	l := log.G(ctx).WithFields(log.Fields{"id": c.id, "why": why})
	// The caller's request may be over (a cancelled Resume): the pin must
	// go all the same.
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pinTimeout)
	defer cancel()
	if err := c.pinner.Unpin(uctx, c.upper); err != nil {
		l.WithError(err).Warn("precopy: unpin the writable layer")
		return
	}
	c.pinned = false
	l.Debug("precopy: unpinned the writable layer")
}
