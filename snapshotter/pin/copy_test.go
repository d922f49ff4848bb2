package pin

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the layers under test have other owners, whiteout devices and trusted.* xattrs")
	}
}

// onTmpfs mounts a tmpfs for t and returns it, unmounted at t's end.
func onTmpfs(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("precopy-pin-test", dir, "tmpfs", 0, "size=1g"); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount the test tmpfs: %v", err)
		}
	})
	return dir
}

// filesystems are where the copy tests run: the test's temp dir (a disk
// here) and a tmpfs, which differ in sparse files, clone and xattrs.
func filesystems(t *testing.T, fn func(t *testing.T, root string)) {
	t.Run("tempdir", func(t *testing.T) { fn(t, t.TempDir()) })
	t.Run("tmpfs", func(t *testing.T) { fn(t, onTmpfs(t)) })
}

var (
	past   = time.Date(2020, 1, 2, 3, 4, 5, 6000, time.UTC)
	past2  = time.Date(2021, 6, 7, 8, 9, 10, 11000, time.UTC)
	layerT = []unix.Timespec{unix.NsecToTimespec(past.UnixNano()), unix.NsecToTimespec(past2.UnixNano())}
)

// makeLayer makes at dir what an overlay upper dir holds, with every kind
// of entry Copy must keep: an opaque dir, a whiteout, a redirect, hard
// links, a sparse file, a setuid file of another owner, symlinks leading
// out of the tree, a fifo; every entry with its own times.
func makeLayer(t *testing.T, dir, outside string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(dir, "etc/opaque/sub"), 0o755))
	must(t, os.Mkdir(filepath.Join(dir, "ro"), 0o555))
	write(t, filepath.Join(dir, "etc/status"), "at-dump", 0o640)
	write(t, filepath.Join(dir, "etc/opaque/sub/x"), "x", 0o600)
	write(t, filepath.Join(dir, "setuid"), "#!/bin/true", 0o4755)
	must(t, os.Lchown(filepath.Join(dir, "setuid"), 1000, 1001))
	must(t, os.Chown(filepath.Join(dir, "etc/opaque"), 1002, 1003))
	must(t, unix.Lsetxattr(filepath.Join(dir, "etc/opaque"), "trusted.overlay.opaque", []byte("y"), 0))
	must(t, unix.Lsetxattr(filepath.Join(dir, "etc/opaque"), "user.overlay.opaque", []byte("y"), 0))
	must(t, unix.Lsetxattr(filepath.Join(dir, "etc/status"), "trusted.overlay.redirect", []byte("/old/status"), 0))
	must(t, unix.Mknod(filepath.Join(dir, "etc/deleted"), unix.S_IFCHR|0o000, 0)) // a whiteout
	must(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o620))
	must(t, os.Link(filepath.Join(dir, "etc/status"), filepath.Join(dir, "status-link")))
	must(t, os.Link(filepath.Join(dir, "etc/deleted"), filepath.Join(dir, "etc/deleted2"))) // overlay shares whiteouts
	must(t, os.Symlink(outside, filepath.Join(dir, "out-abs")))
	must(t, os.Symlink("../../"+filepath.Base(outside), filepath.Join(dir, "etc/out-rel")))
	must(t, os.Symlink("status", filepath.Join(dir, "etc/in")))
	must(t, unix.Lsetxattr(filepath.Join(dir, "etc/in"), "trusted.overlay.origin", []byte{0, 1, 2}, 0))
	must(t, os.Lchown(filepath.Join(dir, "etc/in"), 1004, 1005))
	// Sparse: 64 MiB with 4 KiB of data at 1 MiB and at the end.
	f, err := os.Create(filepath.Join(dir, "sparse"))
	must(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte("s"), 4096), 1<<20)
	must(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte("e"), 4096), 64<<20-4096)
	must(t, err)
	must(t, f.Close())
	// Times last, dirs after their content, deepest first.
	var paths []string
	must(t, filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	}))
	for _, p := range slices.Backward(paths) {
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, layerT, unix.AT_SYMLINK_NOFOLLOW))
	}
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	must(t, os.WriteFile(path, []byte(content), 0o600))
	must(t, os.Chmod(path, mode))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCopy copies a layer and finds every entry of it in the copy as it
// was, and nothing from outside the layer.
func TestCopy(t *testing.T) {
	requireRoot(t)
	filesystems(t, func(t *testing.T, root string) {
		outside := filepath.Join(root, "outside")
		must(t, os.Mkdir(outside, 0o755))
		write(t, filepath.Join(outside, "secret"), "not in the layer", 0o644)
		src, dst := filepath.Join(root, "upper"), filepath.Join(root, "copy")
		must(t, os.Mkdir(src, 0o711))
		makeLayer(t, src, outside)

		before := snapshot(t, src)
		must(t, Copy(context.Background(), src, dst))
		requireSame(t, "copy", before, snapshot(t, dst))
		// The source was only read, with O_NOATIME.
		requireSame(t, "source after the copy", before, snapshot(t, src))
		requireSameContent(t, src, dst)

		// Hard links stay links within the copy, to inodes of its own.
		a, b, orig := stat(t, dst, "etc/status"), stat(t, dst, "status-link"), stat(t, src, "etc/status")
		if a.Ino != b.Ino || a.Ino == orig.Ino || a.Nlink != 2 {
			t.Errorf("hard link: copy inodes %d, %d (nlink %d), source %d", a.Ino, b.Ino, a.Nlink, orig.Ino)
		}
		if w1, w2 := stat(t, dst, "etc/deleted"), stat(t, dst, "etc/deleted2"); w1.Ino != w2.Ino {
			t.Error("linked whiteouts copied as two inodes")
		}
		// Sparse stays sparse.
		if s, d := stat(t, src, "sparse"), stat(t, dst, "sparse"); d.Blocks > s.Blocks || d.Blocks*512 >= d.Size/2 {
			t.Errorf("sparse file: copy has %d blocks of 512 for %d bytes, source %d blocks", d.Blocks, d.Size, s.Blocks)
		}
		// Symlinks out of the layer were copied as symlinks (above),
		// and what they lead to was not touched.
		if entries, _ := os.ReadDir(outside); len(entries) != 1 {
			t.Errorf("the dir outside the layer holds %v, want only its secret", entries)
		}
	})
}

func stat(t *testing.T, dir, rel string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dir, rel), &st))
	return st
}

// meta is what a copy must keep of an entry, its content aside.
type meta struct {
	st     unix.Stat_t
	xattrs map[string]string
	link   string
}

// snapshot is the meta of every entry of the tree at dir, taken without
// reading any file or dir (which would change their atimes).
func snapshot(t *testing.T, dir string) map[string]*meta {
	t.Helper()
	m := map[string]*meta{}
	var walk func(rel string)
	walk = func(rel string) {
		e := &meta{st: stat(t, dir, rel), xattrs: xattrs(t, filepath.Join(dir, rel))}
		m[rel] = e
		switch e.st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			e.link, _ = os.Readlink(filepath.Join(dir, rel))
		case unix.S_IFDIR:
			f, err := os.OpenFile(filepath.Join(dir, rel), os.O_RDONLY|unix.O_NOATIME, 0)
			must(t, err)
			names, err := f.Readdirnames(-1)
			f.Close()
			must(t, err)
			for _, n := range names {
				walk(filepath.Join(rel, n))
			}
		}
	}
	walk(".")
	return m
}

// requireSame checks that b holds what a holds, entry by entry: type,
// owner, mode, size, device, times, xattrs and link target.
func requireSame(t *testing.T, what string, a, b map[string]*meta) {
	t.Helper()
	if len(a) != len(b) {
		t.Errorf("%s: %d entries, want %d", what, len(b), len(a))
	}
	for rel, ea := range a {
		eb := b[rel]
		if eb == nil {
			t.Errorf("%s: no %s", what, rel)
			continue
		}
		sa, sb := ea.st, eb.st
		if sa.Mode != sb.Mode || sa.Uid != sb.Uid || sa.Gid != sb.Gid || sa.Rdev != sb.Rdev ||
			(sa.Mode&unix.S_IFMT != unix.S_IFDIR && sa.Size != sb.Size) {
			t.Errorf("%s: %s: mode %o uid %d gid %d rdev %d size %d; want %o %d %d %d %d",
				what, rel, sb.Mode, sb.Uid, sb.Gid, sb.Rdev, sb.Size, sa.Mode, sa.Uid, sa.Gid, sa.Rdev, sa.Size)
		}
		// Reading a link, which snapshot must, sets its atime.
		if sb.Mtim != sa.Mtim || (sb.Atim != sa.Atim && sa.Mode&unix.S_IFMT != unix.S_IFLNK) {
			t.Errorf("%s: %s: times %v %v, want %v %v", what, rel, sb.Atim, sb.Mtim, sa.Atim, sa.Mtim)
		}
		if !equalXattrs(ea.xattrs, eb.xattrs) {
			t.Errorf("%s: %s: xattrs %q, want %q", what, rel, eb.xattrs, ea.xattrs)
		}
		if ea.link != eb.link {
			t.Errorf("%s: %s: link to %q, want %q", what, rel, eb.link, ea.link)
		}
	}
}

// requireSameContent checks that the regular files of a have the same
// content in b.
func requireSameContent(t *testing.T, a, b string) {
	t.Helper()
	must(t, filepath.Walk(a, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		ca, err := os.ReadFile(p)
		must(t, err)
		cb, err := os.ReadFile(filepath.Join(b, rel))
		must(t, err)
		if !bytes.Equal(ca, cb) {
			t.Errorf("%s: content differs", rel)
		}
		return nil
	}))
}

func xattrs(t *testing.T, path string) map[string]string {
	t.Helper()
	dir, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(dir)
	n := atNode(dir, filepath.Base(path))
	names, err := listXattrs(n)
	must(t, err)
	m := map[string]string{}
	for _, name := range names {
		v, err := getXattr(n, name)
		must(t, err)
		m[name] = string(v)
	}
	return m
}

func equalXattrs(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestCopyRefuses checks what Copy will not do: copy into a non-empty
// dir, or copy a symlink's target dir.
func TestCopyRefuses(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "src")
	must(t, os.Mkdir(src, 0o755))
	write(t, filepath.Join(src, "f"), "f", 0o644)
	if err := Copy(context.Background(), src, src); err == nil {
		t.Error("copy into a non-empty dir succeeded")
	}
	must(t, os.Symlink(src, filepath.Join(root, "link")))
	if err := Copy(context.Background(), filepath.Join(root, "link"), filepath.Join(root, "dst")); err == nil {
		t.Error("copy of a symlink to a dir succeeded")
	}
}

// countdown is a context whose Err turns to Canceled on its n-th call:
// a cancellation in the middle of a copy, at a point the test chooses.
type countdown struct {
	context.Context
	n atomic.Int64
}

func (c *countdown) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

// TestCopyCancel cancels a copy in the middle: it stops with the
// context's error, having copied only part.
func TestCopyCancel(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "src")
	must(t, os.Mkdir(src, 0o755))
	for i := range 100 {
		write(t, filepath.Join(src, "f"+string(rune('a'+i%26))+string(rune('a'+i/26))), "data", 0o644)
	}
	ctx := &countdown{Context: context.Background()}
	ctx.n.Store(10)
	dst := filepath.Join(root, "dst")
	err := Copy(ctx, src, dst)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("copy with a cancelled context: %v", err)
	}
	if entries, _ := os.ReadDir(dst); len(entries) == 0 || len(entries) >= 100 {
		t.Errorf("copied %d of 100 entries before the cancel, want some", len(entries))
	}
}
