package pin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// container is a container's rootfs as containerd's overlayfs snapshotter
// makes it: a lower layer, and a snapshot dir with the upper and work
// dirs, mounted as an overlay.
type container struct {
	lower, snapshot, upper, rootfs string
	m                              mount.Mount
}

func newContainer(t *testing.T) *container {
	t.Helper()
	root := t.TempDir()
	c := &container{
		lower:    filepath.Join(root, "snapshots", "1", "fs"),
		snapshot: filepath.Join(root, "snapshots", "2"),
		rootfs:   filepath.Join(root, "rootfs"),
	}
	c.upper = filepath.Join(c.snapshot, "fs")
	for _, d := range []string{c.lower, c.upper, filepath.Join(c.snapshot, "work"), c.rootfs} {
		must(t, os.MkdirAll(d, 0o755))
	}
	write(t, filepath.Join(c.lower, "kept"), "kept", 0o644)
	write(t, filepath.Join(c.lower, "deleted"), "deleted", 0o644)
	must(t, os.Mkdir(filepath.Join(c.lower, "dir"), 0o755))
	write(t, filepath.Join(c.lower, "dir", "old"), "old", 0o644)
	c.m = mount.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"index=off", "lowerdir=" + c.lower, "upperdir=" + c.upper, "workdir=" + filepath.Join(c.snapshot, "work"),
	}}
	must(t, c.m.Mount(c.rootfs))
	t.Cleanup(func() {
		if err := mount.UnmountAll(c.rootfs, 0); err != nil {
			t.Errorf("unmount the rootfs: %v", err)
		}
	})
	return c
}

// diffView is what containerd's walking differ reads: the snapshot's
// mounts through WithReadonlyTempMount, with the upper dir as a lowerdir
// path.
func (c *container) diffView(t *testing.T, fn func(root string)) {
	t.Helper()
	must(t, mount.WithReadonlyTempMount(context.Background(), []mount.Mount{c.m}, func(root string) error {
		fn(root)
		return nil
	}))
}

func requireContent(t *testing.T, what, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if want == "" {
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %s: %q, %v; want it absent", what, path, b, err)
		}
		return
	}
	if err != nil || string(b) != want {
		t.Errorf("%s: %s: %q, %v; want %q", what, path, b, err, want)
	}
}

// requireNothingLeft fails if a pin of c left a mount over its upper dir,
// a copy beside it, or a record in records.
func requireNothingLeft(t *testing.T, c *container, records string) {
	t.Helper()
	if mounted, err := mountinfo.Mounted(c.upper); err != nil || mounted {
		t.Errorf("a mount is left over the upper dir (%v)", err)
	}
	entries, _ := os.ReadDir(c.snapshot)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), copyPrefix) {
			t.Errorf("a copy is left beside the upper dir: %s", e.Name())
		}
	}
	requireEmpty(t, records)
}

// TestBindMountOverlay pins a container's layer on a real overlay mount:
// the container goes on writing to its real upper dir, a diff that reads
// the upper dir by path (as containerd's differ does) sees the layer as it
// was at the pin, and the release leaves no mount, no copy, no record, and
// the snapshot removable. These are the two facts the bind view stands on.
func TestBindMountOverlay(t *testing.T) {
	requireRoot(t)
	ctx := logtest.WithT(context.Background(), t)
	c := newContainer(t)
	// At the dump: a new file, a changed lower file, a deleted one (a
	// whiteout) and an opaque dir (rmdir and mkdir again).
	write(t, filepath.Join(c.rootfs, "status"), "at-dump", 0o644)
	write(t, filepath.Join(c.rootfs, "kept"), "changed", 0o644)
	must(t, os.Remove(filepath.Join(c.rootfs, "deleted")))
	must(t, os.RemoveAll(filepath.Join(c.rootfs, "dir")))
	must(t, os.Mkdir(filepath.Join(c.rootfs, "dir"), 0o755))
	// The real upper dir, reachable while something covers its path.
	real, err := os.Open(c.upper)
	must(t, err)
	defer real.Close()

	records := t.TempDir()
	l := &Local{RecordDir: records}
	t.Cleanup(func() { l.Close(ctx) })
	res, err := l.Pin(ctx, c.upper)
	must(t, err)
	if filepath.Dir(res.Where) != c.snapshot || res.Files < 4 {
		t.Errorf("pin result %+v", res)
	}
	if recs, _ := filepath.Glob(filepath.Join(records, "*.json")); len(recs) != 1 {
		t.Errorf("records %v, want one", recs)
	}
	if err := os.WriteFile(filepath.Join(c.upper, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to the pinned path: %v, want EROFS", err)
	}

	// The container runs on.
	write(t, filepath.Join(c.rootfs, "status"), "after-thaw", 0o644)
	write(t, filepath.Join(c.rootfs, "new"), "new", 0o644)
	requireContent(t, "container", filepath.Join(c.rootfs, "status"), "after-thaw")
	requireContent(t, "real upper dir", filepath.Join("/proc/self/fd", strconv.Itoa(int(real.Fd())), "status"), "after-thaw")
	requireContent(t, "real upper dir", filepath.Join("/proc/self/fd", strconv.Itoa(int(real.Fd())), "new"), "new")
	c.diffView(t, func(root string) {
		requireContent(t, "diff", filepath.Join(root, "status"), "at-dump")
		requireContent(t, "diff", filepath.Join(root, "kept"), "changed")
		requireContent(t, "diff", filepath.Join(root, "deleted"), "")
		requireContent(t, "diff", filepath.Join(root, "dir", "old"), "")
		requireContent(t, "diff", filepath.Join(root, "new"), "")
	})

	must(t, l.Unpin(ctx, c.upper))
	requireNothingLeft(t, c, records)
	c.diffView(t, func(root string) {
		requireContent(t, "diff after the release", filepath.Join(root, "status"), "after-thaw")
		requireContent(t, "diff after the release", filepath.Join(root, "new"), "new")
	})
	// A pin must never outlive its container: the snapshot goes.
	must(t, mount.UnmountAll(c.rootfs, 0))
	must(t, os.RemoveAll(c.snapshot))
}

// TestReleaseRecorded pins, then forgets the pin as a killed shim would:
// the mount stays, a new pin of the layer is refused, and ReleaseRecorded
// from the record releases everything, twice without harm.
func TestReleaseRecorded(t *testing.T) {
	requireRoot(t)
	ctx := logtest.WithT(context.Background(), t)
	c := newContainer(t)
	write(t, filepath.Join(c.rootfs, "status"), "at-dump", 0o644)
	records := t.TempDir()
	if _, err := (&Local{RecordDir: records}).Pin(ctx, c.upper); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ReleaseRecorded(ctx, records) })
	// The shim is gone; a new one starts.
	if _, err := (&Local{RecordDir: records}).Pin(ctx, c.upper); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("pin over a pin a killed shim left: %v, want failed precondition", err)
	}
	write(t, filepath.Join(records, copyPrefix+"torn.json"), `{"upper": "/var/lib/`, 0o600) // killed while writing
	must(t, ReleaseRecorded(ctx, records))
	requireNothingLeft(t, c, records)
	must(t, ReleaseRecorded(ctx, records))
	must(t, ReleaseRecorded(ctx, filepath.Join(records, "none")))
	must(t, mount.UnmountAll(c.rootfs, 0))
	must(t, os.RemoveAll(c.snapshot))
}

// TestReleaseRecordedRefusesForeignCopy does not remove a dir a record
// names unless it is a pin's copy beside the recorded upper dir.
func TestReleaseRecordedRefusesForeignCopy(t *testing.T) {
	ctx := logtest.WithT(context.Background(), t)
	records, victim := t.TempDir(), t.TempDir()
	must(t, writeRecord(filepath.Join(records, copyPrefix+"x.json"), record{Upper: "/nonexistent/fs", Copy: victim}))
	if err := ReleaseRecorded(ctx, records); !errdefs.IsInvalidArgument(err) {
		t.Errorf("release of a record naming %s: %v, want invalid argument", victim, err)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("the dir a bad record named: %v", err)
	}
}
