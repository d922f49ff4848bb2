package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/precopy/precopy/snapshotter/pin"
)

// Pins: a pin is a point-in-time copy of an active snapshot's writable
// layer (its overlay upper dir). While it stands, Mounts of that snapshot
// returns a read-only view of the copy over the snapshot's parents, so
// that a diff of the snapshot taken after the container ran on shows the
// layer as it was when pinned. That is what lets precopy's shim thaw a
// container right after its final dump: the client's rw-layer diff, which
// comes later, still matches the memory image. The mechanism (measure,
// copy, bookkeeping) is package pin's, with its Served view: the copies
// live on the snapshotter's tmpfs, beside overlay's snapshots dir.
//
// Pins are keyed by the upper dir, which the shim knows from the rootfs
// mounts of the container and the snapshotter from its own: the shim does
// not know the snapshot's key, which containerd's metadata store prefixes
// with a namespace and an id.

// pinsDir is under the tmpfs, beside overlay's snapshots dir.
const pinsDir = "pins"

// Pin copies the writable layer whose overlay upper dir is upper and
// serves the copy to Mounts until Unpin, the snapshot's removal, or ttl,
// whichever comes first. It returns what it copied and what that cost:
// the caller holds the container frozen meanwhile. Pinning a pinned
// layer replaces its pin. upper must be the upper dir of one of this
// snapshotter's active snapshots (errdefs.ErrNotFound otherwise: the
// container's rootfs is not precopyd's). A layer over pin.DefaultLimit
// is refused (pin.ErrTooLarge). If ctx ends first, nothing is left.
func (s *Snapshotter) Pin(ctx context.Context, upper string, ttl time.Duration) (pin.Result, error) {
	if ttl <= 0 {
		return pin.Result{}, fmt.Errorf("pin %s: ttl %v must be positive: %w", upper, ttl, errdefs.ErrInvalidArgument)
	}
	if err := s.ownsUpper(upper); err != nil {
		return pin.Result{}, err
	}
	res, err := s.pins.Pin(ctx, upper, pin.Options{
		View:  pin.Served{Dir: filepath.Join(s.fsDir, pinsDir)},
		Limit: pin.DefaultLimit,
		TTL:   ttl,
	})
	if err != nil {
		return pin.Result{}, s.mapError(err)
	}
	// Removed while it was being copied (Remove unpins, but may have
	// come before the pin was registered).
	if err := s.ownsUpper(upper); err != nil {
		return pin.Result{}, errors.Join(err, s.pins.Unpin(ctx, upper))
	}
	return res, nil
}

// Unpin releases the pin of upper; unpinning what is not pinned is not
// an error (the pin may have timed out).
func (s *Snapshotter) Unpin(ctx context.Context, upper string) error {
	return s.pins.Unpin(ctx, upper)
}

// Pinned says whether the set of pins knows of upper.
func (s *Snapshotter) Pinned(upper string) bool {
	return slices.Contains(s.pins.Pinned(), upper)
}

// ownsUpper checks that upper is an upper dir of this snapshotter's:
// overlay keeps them at <root>/snapshots/<id>/fs.
func (s *Snapshotter) ownsUpper(upper string) error {
	clean := filepath.Clean(upper)
	rel, err := filepath.Rel(filepath.Join(s.fsDir, "snapshots"), clean)
	parts := strings.Split(rel, string(filepath.Separator))
	if err != nil || clean != upper || len(parts) != 2 || parts[0] == ".." || parts[1] != "fs" {
		return fmt.Errorf("pin %s: not a writable layer of precopyd's snapshotter: %w", upper, errdefs.ErrNotFound)
	}
	if fi, err := os.Stat(upper); err != nil || !fi.IsDir() {
		return fmt.Errorf("pin %s: no such writable layer: %w", upper, errdefs.ErrNotFound)
	}
	return nil
}

// Mounts returns the snapshot's mounts, or for a pinned writable layer
// the read-only view of its pinned copy.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	m, err := s.Snapshotter.Mounts(ctx, key)
	if err != nil || len(m) != 1 {
		return m, err
	}
	if c, ok := s.pins.Copy(upperOf(m[0])); ok {
		return []mount.Mount{pinnedView(m[0], c)}, nil
	}
	return m, nil
}

// Remove removes a snapshot, releasing its pin first.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	if m, err := s.Snapshotter.Mounts(ctx, key); err == nil && len(m) == 1 {
		if upper := upperOf(m[0]); upper != "" {
			if err := s.pins.Unpin(ctx, upper); err != nil {
				log.G(ctx).WithError(err).WithField("upper", upper).Warn("release the pin of a snapshot being removed")
			}
		}
	}
	return s.mapError(s.Snapshotter.Remove(ctx, key))
}

// upperOf is the pin key of an active snapshot's mount.
func upperOf(m mount.Mount) string { return pin.UpperDir(m.Type, m.Source, m.Options) }

// pinnedView is m with the pinned copy in place of its writable layer,
// read-only: the copy on top of the parents' lower dirs.
func pinnedView(m mount.Mount, copy string) mount.Mount {
	if m.Type == "bind" {
		return mount.Mount{Type: "bind", Source: copy, Options: []string{"ro", "rbind"}}
	}
	var opts []string
	lower := copy
	for _, o := range m.Options {
		switch {
		case strings.HasPrefix(o, "upperdir="), strings.HasPrefix(o, "workdir="):
		case strings.HasPrefix(o, "lowerdir="):
			lower += ":" + strings.TrimPrefix(o, "lowerdir=")
		default:
			opts = append(opts, o)
		}
	}
	return mount.Mount{Type: "overlay", Source: "overlay", Options: append(opts, "lowerdir="+lower)}
}
