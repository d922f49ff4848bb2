package pin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Copy makes dst a point-in-time copy of the tree at src for a diff to
// read in its place: owners, modes, times (a directory's after its
// content), extended attributes (trusted.overlay.* and user.overlay.*,
// which mark opaque dirs, redirects and metacopy files, included),
// whiteouts (0/0 char devices) and other special files, symlinks as
// symlinks, hard links as hard links, sparse files sparse, and data
// shared with the source (FICLONE) where the filesystem can. dst must not
// exist, or be an empty directory; on error the caller removes it. Copy
// stops at ctx's end.
//
// continuity's fs.CopyDir does most of this, and is what precopyd used,
// but it is not right here (continuity v0.5.0): it fsyncs every file it
// copies (a copy thrown away after the diff needs no durability, and the
// container is frozen meanwhile: BenchmarkCopy compares the two), it sets
// a directory's times before copying its content (so every copied dir
// carries the copy's time as its mtime), it cannot be cancelled, and it
// opens by path, so a component swapped for a symlink during the copy
// would be followed. Here every entry is opened relative to its verified
// parent dir with O_NOFOLLOW, so nothing outside src is ever read or
// written.
func Copy(ctx context.Context, src, dst string) error {
	sfd, err := openDir(unix.AT_FDCWD, src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer unix.Close(sfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := makeEmptyDir(dst); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	dfd, err := openDir(unix.AT_FDCWD, dst)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer unix.Close(dfd)
	c := &copier{ctx: ctx, src: src, dstRoot: dfd, links: map[inode]string{}}
	if err := c.dir(sfd, dfd, ""); err != nil {
		return err
	}
	if err := setMeta(fdNode(sfd), fdNode(dfd), &st); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// makeEmptyDir makes dir, or checks that it is an empty directory.
func makeEmptyDir(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if !errors.Is(err, os.ErrExist) {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if names, err := f.Readdirnames(1); err != io.EOF {
		return fmt.Errorf("copy into %s: not an empty directory (%v, %v)", dir, names, err)
	}
	return nil
}

type copier struct {
	ctx     context.Context
	src     string
	dstRoot int
	// links maps an inode with more than one link to where its first
	// link was copied, relative to dstRoot.
	links map[inode]string
	// Set once the filesystem has refused the call, so as not to ask
	// again for every file.
	noClone, noCopyRange bool
	buf                  []byte
}

// dir copies the entries of the dir open at sfd into the dir open at dfd;
// rel is where they are below the roots.
func (c *copier) dir(sfd, dfd int, rel string) error {
	names, err := readNames(sfd)
	if err != nil {
		return fmt.Errorf("copy %s: %w", filepath.Join(c.src, rel), err)
	}
	for _, name := range names {
		if err := c.ctx.Err(); err != nil {
			return fmt.Errorf("copy %s: %w", c.src, err)
		}
		if err := c.entry(sfd, dfd, name, filepath.Join(rel, name)); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) entry(sfd, dfd int, name, rel string) error {
	fail := func(err error) error { return fmt.Errorf("copy %s: %w", filepath.Join(c.src, rel), err) }
	var st unix.Stat_t
	if err := unix.Fstatat(sfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail(err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return c.subdir(sfd, dfd, name, rel, &st)
	}
	if st.Nlink > 1 {
		id := inode{st.Dev, st.Ino}
		if first, ok := c.links[id]; ok {
			if err := unix.Linkat(c.dstRoot, first, dfd, name, 0); err != nil {
				return fail(fmt.Errorf("hard link to %s: %w", first, err))
			}
			return nil
		}
		c.links[id] = rel
	}
	var err error
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		err = c.file(sfd, dfd, name, &st)
	case unix.S_IFLNK:
		var target string
		if target, err = readlinkat(sfd, name); err == nil {
			err = unix.Symlinkat(target, dfd, name)
		}
	default: // whiteouts (char 0/0), devices, fifos, sockets
		err = unix.Mknodat(dfd, name, st.Mode, int(st.Rdev))
	}
	if err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
		err = setMeta(atNode(sfd, name), atNode(dfd, name), &st)
	}
	if err != nil {
		return fail(err)
	}
	return nil
}

func (c *copier) subdir(sfd, dfd int, name, rel string, st *unix.Stat_t) error {
	fail := func(err error) error { return fmt.Errorf("copy %s: %w", filepath.Join(c.src, rel), err) }
	csfd, err := openDir(sfd, name)
	if err != nil {
		return fail(err)
	}
	defer unix.Close(csfd)
	if err := sameInode(csfd, st); err != nil {
		return fail(err)
	}
	if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
		return fail(err)
	}
	cdfd, err := openDir(dfd, name)
	if err != nil {
		return fail(err)
	}
	defer unix.Close(cdfd)
	if err := c.dir(csfd, cdfd, rel); err != nil {
		return err
	}
	// After the content: creating entries changes a dir's mtime.
	if err := setMeta(fdNode(csfd), fdNode(cdfd), st); err != nil {
		return fail(err)
	}
	return nil
}

// file copies a regular file's data and metadata.
func (c *copier) file(sdir, ddir int, name string, st *unix.Stat_t) error {
	// O_NOATIME: copying must not change the live layer's access times.
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	sfd, err := unix.Openat(sdir, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) { // not the owner, and not root
		sfd, err = unix.Openat(sdir, name, flags, 0)
	}
	if err != nil {
		return err
	}
	defer unix.Close(sfd)
	if err := sameInode(sfd, st); err != nil {
		return err
	}
	dfd, err := unix.Openat(ddir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := c.data(sfd, dfd, st.Size); err != nil {
		return err
	}
	return setMeta(fdNode(sfd), fdNode(dfd), st)
}

// copyChunk bounds one copy_file_range call, so that a cancellation is
// seen within one chunk's time.
const copyChunk = 64 << 20

// data copies size bytes from sfd to dfd: shared (FICLONE) where the
// filesystem can, else only the data ranges between holes
// (SEEK_DATA/SEEK_HOLE), in the kernel (copy_file_range) where it can.
func (c *copier) data(sfd, dfd int, size int64) error {
	if size == 0 {
		return nil
	}
	if !c.noClone {
		err := unix.IoctlFileClone(dfd, sfd)
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return fmt.Errorf("clone: %w", err)
		}
		c.noClone = true
	}
	if err := unix.Ftruncate(dfd, size); err != nil {
		return err
	}
	for off := int64(0); off < size; {
		start, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO): // only a hole is left
			return nil
		case errors.Is(err, unix.EINVAL): // no SEEK_DATA here: all data
			start = off
		case err != nil:
			return fmt.Errorf("seek data at %d: %w", off, err)
		}
		end, err := unix.Seek(sfd, start, unix.SEEK_HOLE)
		if err != nil || end > size {
			end = size
		}
		if err := c.span(sfd, dfd, start, end); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// span copies the bytes [start, end).
func (c *copier) span(sfd, dfd int, start, end int64) error {
	for off := start; off < end; {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		n := min(end-off, copyChunk)
		var done int
		var err error
		if !c.noCopyRange {
			soff, doff := off, off
			done, err = unix.CopyFileRange(sfd, &soff, dfd, &doff, int(n), 0)
			if err != nil && unsupported(err) {
				c.noCopyRange = true
				continue
			}
		} else {
			done, err = c.readWrite(sfd, dfd, off, n)
		}
		if err != nil {
			return fmt.Errorf("copy bytes at %d: %w", off, err)
		}
		if done == 0 {
			return fmt.Errorf("copy bytes at %d: the file shrank during the copy", off)
		}
		off += int64(done)
	}
	return nil
}

func (c *copier) readWrite(sfd, dfd int, off, n int64) (int, error) {
	if c.buf == nil {
		c.buf = make([]byte, 1<<20)
	}
	b := c.buf[:min(n, int64(len(c.buf)))]
	r, err := unix.Pread(sfd, b, off)
	if err != nil || r == 0 {
		return r, err
	}
	return unix.Pwrite(dfd, b[:r], off)
}

// unsupported reports whether err is a filesystem's way to say it cannot
// do a call (clone, copy_file_range) for these files.
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)
}

// openDir opens the directory name in dirfd without following a symlink,
// and without changing its access time where it may.
func openDir(dirfd int, name string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) { // not the owner, and not root
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	return fd, err
}

// sameInode checks that fd is the inode st was taken of: the entry was
// not replaced between the stat and the open.
func sameInode(fd int, st *unix.Stat_t) error {
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil {
		return err
	}
	if now.Dev != st.Dev || now.Ino != st.Ino {
		return errors.New("replaced during the copy")
	}
	return nil
}

func readNames(dirfd int) ([]string, error) {
	fd, err := unix.Dup(dirfd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "")
	defer f.Close()
	return f.Readdirnames(-1)
}

func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		b := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, b)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(b[:n]), nil
		}
	}
}

// A node is a file to read or set metadata of: an open fd (name ""), or
// the entry name in the dir open at fd, not followed if a symlink.
type node struct {
	fd   int
	name string
}

func fdNode(fd int) node                 { return node{fd: fd} }
func atNode(dirfd int, name string) node { return node{fd: dirfd, name: name} }

// path names n for the l*xattr calls, which have no *at form in x/sys:
// the dir through its /proc/self/fd link, so that nothing but n's last
// component is resolved, and that one is not followed.
func (n node) path() string {
	return "/proc/self/fd/" + strconv.Itoa(n.fd) + "/" + n.name
}

// setMeta gives dst src's owner, mode, extended attributes and times, in
// that order: a chown clears setuid bits and security.capability, which
// the chmod and the xattrs then restore, and neither changes the times.
func setMeta(src, dst node, st *unix.Stat_t) error {
	var err error
	if dst.name == "" {
		err = unix.Fchown(dst.fd, int(st.Uid), int(st.Gid))
	} else {
		err = unix.Fchownat(dst.fd, dst.name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK { // a symlink's mode cannot be set
		if dst.name == "" {
			err = unix.Fchmod(dst.fd, st.Mode&0o7777)
		} else {
			err = unix.Fchmodat(dst.fd, dst.name, st.Mode&0o7777, 0)
		}
		if err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := copyXattrs(src, dst); err != nil {
		return err
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if dst.name == "" {
		err = unix.UtimesNanoAt(dst.fd, "", ts, unix.AT_EMPTY_PATH)
	} else {
		err = unix.UtimesNanoAt(dst.fd, dst.name, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func copyXattrs(src, dst node) error {
	names, err := listXattrs(src)
	if err != nil {
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, name := range names {
		v, err := getXattr(src, name)
		if err != nil {
			return fmt.Errorf("get xattr %s: %w", name, err)
		}
		if dst.name == "" {
			err = unix.Fsetxattr(dst.fd, name, v, 0)
		} else {
			err = unix.Lsetxattr(dst.path(), name, v, 0)
		}
		if err != nil {
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	return nil
}

func listXattrs(n node) ([]string, error) {
	b, err := sized(func(b []byte) (int, error) {
		if n.name == "" {
			return unix.Flistxattr(n.fd, b)
		}
		return unix.Llistxattr(n.path(), b)
	})
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	var names []string
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		if i > 0 {
			names = append(names, string(b[:i]))
		}
		b = b[min(i+1, len(b)):]
	}
	return names, err
}

func getXattr(n node, name string) ([]byte, error) {
	return sized(func(b []byte) (int, error) {
		if n.name == "" {
			return unix.Fgetxattr(n.fd, name, b)
		}
		return unix.Lgetxattr(n.path(), name, b)
	})
}

// sized calls get, which fills b as the *xattr calls do, with a buffer
// large enough, asking the size first and again if it grew meanwhile.
func sized(get func([]byte) (int, error)) ([]byte, error) {
	for {
		n, err := get(nil)
		if err != nil || n == 0 {
			return nil, err
		}
		b := make([]byte, n)
		n, err = get(b)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return b[:n], nil
	}
}
