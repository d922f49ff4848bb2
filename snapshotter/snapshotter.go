package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	units "github.com/docker/go-units"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/precopy/precopy/snapshotter/pin"
)

// Snapshotter is containerd's overlay snapshotter on a tmpfs of fixed
// size. Its methods are overlay's, with running out of room reported as
// errdefs.ErrResourceExhausted.
type Snapshotter struct {
	snapshots.Snapshotter // overlay's

	fsDir   string // the tmpfs
	refused atomic.Int64
	pins    pin.Set
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// Layout under root.
const (
	metadataFile = "metadata.db" // beside the tmpfs, see the package doc
	tmpfsDir     = "fs"
)

// New mounts a tmpfs of limit bytes under root (created 0700) and returns
// the overlay snapshotter rooted on it. Metadata a predecessor left under
// root is logged as lost and removed. If New fails, nothing is left
// mounted. Close unmounts.
func New(ctx context.Context, root string, limit int64) (_ *Snapshotter, retErr error) {
	if limit <= 0 {
		return nil, fmt.Errorf("snapshot limit %d: must be positive: %w", limit, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter root: %w", err)
	}
	if !onTmpfs(root) {
		log.G(ctx).WithField("root", root).Warn("snapshot metadata is not on a tmpfs: names and labels of snapshots reach a disk (their data does not)")
	}
	if err := discardStale(ctx, filepath.Join(root, metadataFile)); err != nil {
		return nil, err
	}
	fsDir := filepath.Join(root, tmpfsDir)
	if err := mountTmpfs(ctx, fsDir, limit); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			if err := unmountTmpfs(ctx, fsDir); err != nil {
				log.G(ctx).WithError(err).Error("could not unmount the snapshot tmpfs after a failed start")
			}
		}
	}()
	// The metadata is discarded at every start, so syncing it to its
	// file would buy nothing.
	ms, err := storage.NewMetaStore(filepath.Join(root, metadataFile), func(o *bolt.Options) error {
		o.NoSync = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot metadata: %w", err)
	}
	// Removal is synchronous (containerd's default plugin defers it to
	// Cleanup): a removed snapshot's memory is free at once.
	sn, err := overlay.NewSnapshotter(fsDir, overlay.WithMetaStore(ms))
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("overlay snapshotter on %s: %w", fsDir, err)
	}
	return &Snapshotter{Snapshotter: sn, fsDir: fsDir}, nil
}

// discardStale logs the snapshots whose metadata a predecessor left at
// path, which died with its tmpfs, and removes the file.
func discardStale(ctx context.Context, path string) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		log.G(ctx).Info("no snapshots from an earlier precopyd: nothing lost")
		return nil
	}
	var names []string
	ms, err := storage.NewMetaStore(path)
	if err == nil {
		err = ms.WithTransaction(ctx, false, func(ctx context.Context) error {
			return storage.WalkInfo(ctx, func(_ context.Context, info snapshots.Info) error {
				names = append(names, info.Name)
				return nil
			})
		})
		ms.Close()
	}
	if errdefs.IsNotFound(err) {
		err = nil // no snapshot was ever made: no bucket
	}
	l := log.G(ctx).WithField("path", path)
	switch {
	case err != nil:
		l.WithError(err).Warn("snapshot metadata of an earlier precopyd unreadable; its snapshots are lost")
	case len(names) == 0:
		l.Info("no snapshots from an earlier precopyd: nothing lost")
	default:
		l.WithField("snapshots", abbreviate(names, 10)).Warnf("%d snapshots of an earlier precopyd were in memory only and are lost; containerd still lists them: remove the images and containers using them", len(names))
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("discard stale snapshot metadata: %w", err)
	}
	return nil
}

// abbreviate joins the first n of names and says how many more there are.
func abbreviate(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:n], ", "), len(names)-n)
}

// Prepare creates a writable snapshot, unless the tmpfs is full: whatever
// would be written into it (a layer being unpacked, a container's changes)
// could not be.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	u, err := statfs(s.fsDir)
	if err != nil {
		return nil, err
	}
	if u.free <= 0 {
		s.refused.Add(1)
		return nil, fmt.Errorf("prepare snapshot %q: %w", key, s.full(u, nil))
	}
	m, err := s.Snapshotter.Prepare(ctx, key, parent, opts...)
	return m, s.mapError(err)
}

// View creates a read-only snapshot: it takes no room.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	m, err := s.Snapshotter.View(ctx, key, parent, opts...)
	return m, s.mapError(err)
}

func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.mapError(s.Snapshotter.Commit(ctx, name, key, opts...))
}

func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	info, err := s.Snapshotter.Update(ctx, info, fieldpaths...)
	return info, s.mapError(err)
}

// Walk calls fn for each snapshot matching the filters. Before the first
// snapshot is made, the metadata has no bucket, which overlay reports as
// not found; that is no snapshots.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	called := false
	err := s.Snapshotter.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		called = true
		return fn(ctx, info)
	}, filters...)
	if !called && errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// Cleanup removes directories of removed snapshots that a failed removal
// left; containerd's garbage collector calls it.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	if c, ok := s.Snapshotter.(snapshots.Cleaner); ok {
		return s.mapError(c.Cleanup(ctx))
	}
	return nil
}

// mapError reports ENOSPC (out of blocks or inodes) as the tmpfs being
// full.
func (s *Snapshotter) mapError(err error) error {
	if err == nil || !errors.Is(err, unix.ENOSPC) {
		return err
	}
	u, serr := statfs(s.fsDir)
	if serr != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrResourceExhausted)
	}
	return s.full(u, err)
}

// full is the error for a full tmpfs, cause being what ran into it.
func (s *Snapshotter) full(u usage, cause error) error {
	msg := fmt.Sprintf("snapshot storage full: %s of %s limit in use (precopyd --snapshot-limit)",
		units.BytesSize(float64(u.used)), units.BytesSize(float64(u.size)))
	if cause != nil {
		msg += ": " + cause.Error()
	}
	return fmt.Errorf("%s: %w", msg, errdefs.ErrResourceExhausted)
}

// Metrics is a snapshot of what the snapshotter holds.
type Metrics struct {
	// UsedBytes is what the tmpfs holds, LimitBytes its size.
	UsedBytes  int64 `json:"used_bytes"`
	LimitBytes int64 `json:"limit_bytes"`
	// Snapshots counts snapshots of every kind.
	Snapshots int `json:"snapshots"`
	// PreparesRefused counts Prepare calls refused for a full tmpfs.
	PreparesRefused int64 `json:"prepares_refused"`
}

// Metrics returns the snapshotter's current metrics.
func (s *Snapshotter) Metrics(ctx context.Context) (Metrics, error) {
	u, err := statfs(s.fsDir)
	if err != nil {
		return Metrics{}, err
	}
	m := Metrics{UsedBytes: u.used, LimitBytes: u.size, PreparesRefused: s.refused.Load()}
	err = s.Walk(ctx, func(context.Context, snapshots.Info) error {
		m.Snapshots++
		return nil
	})
	return m, err
}

// Close releases every pin, closes the snapshotter and unmounts its tmpfs.
func (s *Snapshotter) Close() error {
	ctx := context.Background()
	return errors.Join(s.pins.Close(ctx), s.Snapshotter.Close(), unmountTmpfs(ctx, s.fsDir))
}
