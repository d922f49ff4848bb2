package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/precopy/precopy/plugin/pins"
)

// A pin is a point-in-time copy of an active snapshot's writable layer
// (its overlay upper dir). While it stands, Mounts of that snapshot
// returns a read-only view of the copy over the snapshot's parents, so
// that a diff of the snapshot taken after the container ran on shows the
// layer as it was when pinned. That is what lets precopy's shim thaw a
// container right after its final dump: the client's rw-layer diff, which
// comes later, still matches the memory image.
//
// Pins are keyed by the upper dir, which the shim knows from the rootfs
// mounts of the container and the snapshotter from its own: the shim does
// not know the snapshot's key, which containerd's metadata store prefixes
// with a namespace and an id.
type pin struct {
	copy  string
	timer *time.Timer
}

type pinSet struct {
	mu  sync.Mutex
	dir string          // where copies live, on the snapshotter's tmpfs
	by  map[string]*pin // upper dir -> pin
	n   int
}

// pinsDir is under the tmpfs, beside overlay's snapshots dir.
const pinsDir = "pins"

// Pin copies the writable layer whose overlay upper dir is upper and
// serves the copy to Mounts until Unpin, the snapshot's removal, or ttl,
// whichever comes first. It returns what the copy cost: the caller holds
// the container frozen meanwhile. Pinning a pinned layer replaces its pin.
// upper must be the upper dir of one of this snapshotter's active
// snapshots (errdefs.ErrNotFound otherwise: the container's rootfs is not
// precopyd's).
func (s *Snapshotter) Pin(ctx context.Context, upper string, ttl time.Duration) (time.Duration, error) {
	start := time.Now()
	if ttl <= 0 {
		return 0, fmt.Errorf("pin %s: ttl %v must be positive: %w", upper, ttl, errdefs.ErrInvalidArgument)
	}
	if err := s.ownsUpper(upper); err != nil {
		return 0, err
	}
	s.pins.mu.Lock()
	s.pins.n++
	dst := filepath.Join(s.pins.dir, fmt.Sprintf("%d-%d", time.Now().UnixNano(), s.pins.n))
	s.pins.mu.Unlock()
	// The copy is made outside the lock: Mounts and Unpin of other
	// containers must not wait for it.
	if err := os.MkdirAll(s.pins.dir, 0o700); err != nil {
		return 0, s.mapError(err)
	}
	if err := fs.CopyDir(dst, upper); err != nil {
		os.RemoveAll(dst)
		return 0, fmt.Errorf("pin %s: copy the writable layer: %w", upper, s.mapError(err))
	}
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	if err := s.ownsUpper(upper); err != nil {
		// Removed while it was being copied.
		os.RemoveAll(dst)
		return 0, err
	}
	s.releaseLocked(ctx, upper, "replaced")
	p := &pin{copy: dst}
	p.timer = time.AfterFunc(ttl, func() {
		s.pins.mu.Lock()
		defer s.pins.mu.Unlock()
		if s.pins.by[upper] == p {
			s.releaseLocked(ctx, upper, fmt.Sprintf("not unpinned within %s", ttl))
		}
	})
	s.pins.by[upper] = p
	cost := time.Since(start)
	log.G(ctx).WithFields(log.Fields{"upper": upper, "cost": cost, "ttl": ttl}).Info("pinned a writable layer")
	return cost, nil
}

// Unpin releases the pin of upper; unpinning what is not pinned is not
// an error (the pin may have timed out).
func (s *Snapshotter) Unpin(ctx context.Context, upper string) error {
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	s.releaseLocked(ctx, upper, "unpinned")
	return nil
}

// Pinned says whether upper is pinned.
func (s *Snapshotter) Pinned(upper string) bool {
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	return s.pins.by[upper] != nil
}

func (s *Snapshotter) releaseLocked(ctx context.Context, upper, why string) {
	p := s.pins.by[upper]
	if p == nil {
		return
	}
	p.timer.Stop()
	delete(s.pins.by, upper)
	if err := os.RemoveAll(p.copy); err != nil {
		log.G(ctx).WithError(err).WithField("copy", p.copy).Warn("remove a pinned copy")
	}
	log.G(ctx).WithFields(log.Fields{"upper": upper, "why": why}).Info("released a pinned writable layer")
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
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	if p := s.pins.by[upperOf(m[0])]; p != nil {
		return []mount.Mount{pinnedView(m[0], p.copy)}, nil
	}
	return m, nil
}

// Remove removes a snapshot, releasing its pin first.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	if m, err := s.Snapshotter.Mounts(ctx, key); err == nil && len(m) == 1 {
		if upper := upperOf(m[0]); upper != "" {
			s.pins.mu.Lock()
			s.releaseLocked(ctx, upper, "snapshot removed")
			s.pins.mu.Unlock()
		}
	}
	return s.mapError(s.Snapshotter.Remove(ctx, key))
}

// upperOf is the pin key of an active snapshot's mount.
func upperOf(m mount.Mount) string { return pins.UpperDir(m.Type, m.Source, m.Options) }

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
