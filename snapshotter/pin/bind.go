package pin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// BindMount is the view for a layer of a snapshotter precopy does not
// run, containerd's own overlayfs above all: the copy is made beside the
// upper dir (<dir of upper>/precopy-pin-*: on its filesystem, so a clone
// can share its blocks, and inside the snapshot's dir, which the
// snapshotter removes with the snapshot) and bind-mounted read-only over
// the upper dir's path in this process's mount namespace, which is
// containerd's (its runc-v2 manager starts shims without CLONE_NEWNS).
// containerd's walking differ mounts the snapshot with
// WithReadonlyTempMount, which makes upperdir= a lowerdir path, so the
// diff reads the copy. The running container is not affected: overlayfs
// cloned the upper dir's mount privately when the rootfs was mounted, and
// goes on writing to the real dir (TestBindMountOverlay checks both).
//
// Propagation: the bind mount keeps what it inherits (no MS_PRIVATE).
// Under a shared parent (the host's / under systemd) the mount is
// propagated to the parent's peers when it is made; making it private
// afterwards would not take those copies back, but cut them off from the
// unmount that releases the pin, leaking them. Left shared, the unmount
// propagates to them as the mount did. The mount is not recursive: the
// copy has no mounts under it.
//
// Each pin is recorded in RecordDir (the shim gives the container's
// bundle dir, which containerd removes after the task is deleted) before
// its copy or mount is made, so that ReleaseRecorded, in a later process,
// can release the pins of one that was killed.
type BindMount struct{ RecordDir string }

// copyPrefix names the copies, beside the upper dirs, and their records.
const copyPrefix = "precopy-pin-"

// record is what ReleaseRecorded needs to release a pin.
type record struct {
	Upper   string    `json:"upper"`
	Copy    string    `json:"copy"`
	PID     int       `json:"pid"`
	Created time.Time `json:"created"`
}

func (v BindMount) recordPath(copyDir string) string {
	return filepath.Join(v.RecordDir, filepath.Base(copyDir)+".json")
}

// Prepare refuses a layer that has a mount over it already (a pin of a
// killed process not yet released would be copied instead of the layer),
// makes the copy's dir beside upper and records the pin. A process
// killed between the two leaves an empty dir in the snapshot's dir,
// removed with the snapshot.
func (v BindMount) Prepare(ctx context.Context, upper string) (string, error) {
	if v.RecordDir == "" {
		return "", fmt.Errorf("no dir to record pins in: %w", errdefs.ErrInvalidArgument)
	}
	// The mount table names mount points by their real paths, which is
	// how a release finds the mount.
	if real, err := filepath.EvalSymlinks(upper); err != nil {
		return "", fmt.Errorf("layer %s: %w", upper, err)
	} else if real != upper {
		return "", fmt.Errorf("layer %s: a path through symlinks (to %s): %w", upper, real, errdefs.ErrInvalidArgument)
	}
	if mounted, err := mountinfo.Mounted(upper); err != nil {
		return "", fmt.Errorf("layer %s: %w", upper, err)
	} else if mounted {
		return "", fmt.Errorf("layer %s has a mount over it (a pin a killed shim left? pin.ReleaseRecorded releases it): %w",
			upper, errdefs.ErrFailedPrecondition)
	}
	copyDir, err := os.MkdirTemp(filepath.Dir(upper), copyPrefix)
	if err != nil {
		return "", fmt.Errorf("copy dir beside %s: %w", upper, err)
	}
	r := record{Upper: upper, Copy: copyDir, PID: os.Getpid(), Created: time.Now()}
	if err := writeRecord(v.recordPath(copyDir), r); err != nil {
		os.Remove(copyDir)
		return "", err
	}
	return copyDir, nil
}

func writeRecord(path string, r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("record the pin of %s: %w", r.Upper, err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("record the pin of %s: %w", r.Upper, err)
	}
	return nil
}

// Show bind-mounts the copy over upper, then makes that mount read-only:
// a bind mount takes its read-only flag only from a remount.
func (BindMount) Show(_ context.Context, upper, copyDir string) error {
	if err := unix.Mount(copyDir, upper, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s over %s: %w", copyDir, upper, err)
	}
	if err := unix.Mount("", upper, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("make the bind over %s read-only: %w", upper, err)
	}
	return nil
}

func (v BindMount) Release(ctx context.Context, upper, copyDir string) error {
	return release(ctx, record{Upper: upper, Copy: copyDir}, v.recordPath(copyDir))
}

// release unmounts r's copy from over its upper dir if it is mounted
// there, removes the copy, then the record at path. Each step is skipped
// if done already.
func release(ctx context.Context, r record, path string) error {
	if err := unmountCopy(ctx, r); err != nil {
		return err
	}
	// Only a dir named as ours, beside the upper dir: the record is
	// input, and RemoveAll of anything else would be a disaster.
	if filepath.Dir(r.Copy) != filepath.Dir(r.Upper) || !strings.HasPrefix(filepath.Base(r.Copy), copyPrefix) {
		return fmt.Errorf("pin record %s: copy %q is not a pin's copy beside %q: %w", path, r.Copy, r.Upper, errdefs.ErrInvalidArgument)
	}
	if err := os.RemoveAll(r.Copy); err != nil {
		return fmt.Errorf("remove the pinned copy %s: %w", r.Copy, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the pin record: %w", err)
	}
	return nil
}

// unmountCopy unmounts the bind mounts of r's copy over r's upper dir.
//
// A busy mount is detached (MNT_DETACH) after a warning: only a diff can
// hold it (containerd's differ mounts an overlay with the upper path as a
// lowerdir for the diff's time), and a release comes after the client's
// diff unless the pin expired or its container is being deleted. Then the
// path must be free at once, or the snapshot's removal fails; the diff's
// own mount keeps the detached one alive until it is unmounted.
func unmountCopy(ctx context.Context, r record) error {
	// One mount is what Show makes; a few more are tolerated (stacked by
	// hand?), not an endless loop on a table that does not change.
	for range 8 {
		mounted, err := copyMounted(r)
		if err != nil || !mounted {
			return err
		}
		err = unix.Unmount(r.Upper, 0)
		if errors.Is(err, unix.EBUSY) {
			log.G(ctx).WithField("upper", r.Upper).Warn("pinned copy still in use (a diff reading it?): detaching it")
			err = unix.Unmount(r.Upper, unix.MNT_DETACH)
		}
		if err != nil {
			return fmt.Errorf("unmount the pinned copy over %s: %w", r.Upper, err)
		}
	}
	return fmt.Errorf("the pinned copy %s is still mounted over %s after 8 unmounts", r.Copy, r.Upper)
}

// copyMounted says whether the top mount at r's upper dir is a bind of
// r's copy. The copy is named in the mount's root, its path within its
// filesystem.
func copyMounted(r record) (bool, error) {
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != r.Upper, false
	})
	if err != nil {
		return false, fmt.Errorf("mounts at %s: %w", r.Upper, err)
	}
	if len(mounts) == 0 {
		return false, nil
	}
	top := mounts[len(mounts)-1] // mountinfo lists mounts in the order they were made
	root := strings.TrimSuffix(top.Root, "//deleted")
	return filepath.Base(root) == filepath.Base(r.Copy), nil
}

// ReleaseRecorded releases the pins recorded in dir by BindMount views of
// processes that are gone (a shim killed while it held a pin): unmounts
// each copy if it is still mounted, removes it and its record. A record
// that cannot be read (its writer killed while writing it, before it made
// anything) is removed. It is idempotent, and a dir that does not exist
// holds no pins. Do not call it on the record dir of pins this process
// holds.
func ReleaseRecorded(ctx context.Context, dir string) error {
	paths, err := filepath.Glob(filepath.Join(dir, copyPrefix+"*.json"))
	if err != nil {
		return err
	}
	var errs []error
	for _, path := range paths {
		var r record
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil || r.Upper == "" || r.Copy == "" {
			log.G(ctx).WithError(err).WithField("record", path).Warn("removing a pin record that cannot be read")
			errs = append(errs, removeIfExists(path))
			continue
		}
		if err := release(ctx, r, path); err != nil {
			errs = append(errs, err)
			continue
		}
		log.G(ctx).WithFields(log.Fields{"upper": r.Upper, "pid": r.PID, "created": r.Created}).Info("released a pin a killed process left")
	}
	return errors.Join(errs...)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
