//go:build linux

package shim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"

	"github.com/precopy/precopy/snapshotter/pin"
)

// pinTTL releases a pin the shim has not unpinned within it (a client
// that never resumed): the pin of a layer small enough to pin outlives
// any client's diff of it by far.
const pinTTL = 2 * time.Minute

// localPinner is the shim's own pinner, for a layer of any snapshotter
// whose rootfs is one overlay (containerd's overlayfs above all): a copy
// of the upper dir made beside it and bind-mounted read-only over its
// path in containerd's mount namespace, where the client's rw-layer diff
// reads it (see pin.BindMount). Each pin is recorded in the container's
// bundle, so that the shim binary's delete, which containerd runs after
// a shim died, releases what a killed shim left (Manager).
type localPinner struct{ local *pin.Local }

// newLocalPinner pins layers recorded in bundle whose copy is estimated
// to take at most maxCopy.
func newLocalPinner(bundle string, maxCopy time.Duration) pinner {
	return localPinner{&pin.Local{RecordDir: bundle, Limit: pinLimit(maxCopy), TTL: pinTTL}}
}

// pinLimit refuses a layer whose copy is estimated to take longer than
// maxCopy at the rate of its filesystem, or that holds more data than
// copies in that time on a disk (the room the copy takes).
func pinLimit(maxCopy time.Duration) pin.Limit {
	return pin.Limit{MaxCopyTime: maxCopy, MaxBytes: int64(pin.DiskRate.BytesPerSecond * maxCopy.Seconds())}
}

func (p localPinner) Pin(ctx context.Context, upper string) (pinResult, error) {
	res, err := p.local.Pin(ctx, upper)
	if err != nil {
		return pinResult{}, err
	}
	return pinResult{Bytes: res.Bytes, Files: res.Files, Cost: res.Cost,
		Where: fmt.Sprintf("%s: %s bind-mounted read-only over the upper dir", pinnedByShim, res.Where)}, nil
}

func (p localPinner) Unpin(ctx context.Context, upper string) error { return p.local.Unpin(ctx, upper) }

// pinnedByShim starts a report's pin_where for a pin of the shim's own.
const pinnedByShim = "shim"

// layerPinner pins a container's writable layer through the first of its
// pinners that takes it: precopyd's, which pins the layers of its own
// snapshotter and refuses others as not found, then the shim's own, for
// any overlay. It unpins through the one that pinned. Callers hold the
// container's mu.
type layerPinner struct {
	pinners []pinner
	// used is the pinner that holds (or may hold) the layer's pin.
	used pinner
}

func (p *layerPinner) Pin(ctx context.Context, upper string) (pinResult, error) {
	var passed []error
	for _, q := range p.pinners {
		res, err := q.Pin(ctx, upper)
		if err != nil && notHers(err) {
			passed = append(passed, err)
			continue
		}
		// A failed pin may have pinned all the same (a call that timed
		// out after the copy): its Unpin goes to q too.
		p.used = q
		return res, err
	}
	return pinResult{}, errors.Join(passed...)
}

func (p *layerPinner) Unpin(ctx context.Context, upper string) error {
	if p.used == nil {
		return nil
	}
	if err := p.used.Unpin(ctx, upper); err != nil {
		return err
	}
	p.used = nil
	return nil
}

// notHers says that a pinner did not pin a layer because it is not one
// of its own (precopyd's snapshotter does not have it), or because it
// cannot be reached: the next pinner may take it.
func notHers(err error) bool {
	return errdefs.IsNotFound(err) || errdefs.IsUnavailable(err)
}
