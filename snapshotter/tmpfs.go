package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// tmpfsSource names precopyd's tmpfs in mount tables.
const tmpfsSource = "precopyd"

// mountTmpfs mounts a tmpfs of size bytes, mode 0700, on dir (created if
// missing). A tmpfs already there, left by a precopyd that died without
// unmounting it, is detached first: its snapshots' metadata is gone with
// the old process's, so nothing could use them.
func mountTmpfs(ctx context.Context, dir string, size int64) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tmpfs for snapshots: %w", err)
	}
	mounted, err := mountinfo.Mounted(dir)
	if err != nil {
		return fmt.Errorf("tmpfs for snapshots: %w", err)
	}
	if mounted {
		log.G(ctx).WithField("path", dir).Warn("detaching a snapshot tmpfs an earlier precopyd left mounted; its snapshots are lost")
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("detach stale tmpfs %s: %w", dir, err)
		}
	}
	if err := unix.Mount(tmpfsSource, dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		return fmt.Errorf("mount tmpfs of %d bytes on %s: %w", size, dir, err)
	}
	return nil
}

// unmountTmpfs unmounts dir. A tmpfs still in use (overlay mounts of
// running containers hold it) is detached: it disappears from the mount
// table now and its memory is freed when the last user unmounts.
func unmountTmpfs(ctx context.Context, dir string) error {
	err := unix.Unmount(dir, 0)
	if errors.Is(err, unix.EBUSY) {
		log.G(ctx).WithField("path", dir).Warn("snapshot tmpfs still in use (containers running on it?); detaching it: their data stays until they stop")
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// usage is what a filesystem holds and can hold, in bytes.
type usage struct{ used, size, free int64 }

func statfs(dir string) (usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return usage{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	bs := int64(st.Bsize)
	return usage{
		used: (int64(st.Blocks) - int64(st.Bfree)) * bs,
		size: int64(st.Blocks) * bs,
		free: int64(st.Bavail) * bs,
	}, nil
}

// onTmpfs says whether dir is on a tmpfs.
func onTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}
