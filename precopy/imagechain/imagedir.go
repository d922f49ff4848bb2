package imagechain

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Image dirs are untrusted input: a checkpoint image travels between
// machines and is restored by root, and FlattenConsuming writes into the
// parent's pages file. So every file is opened relative to its dir's
// descriptor with O_NOFOLLOW after an lstat says it is a regular file
// (never a symlink, FIFO or device, whose open alone may block or act),
// and a pages file must have exactly one link: a second name could be
// anywhere on the filesystem, and its bytes would be copied into the
// image or, in a takeover, patched and truncated.

// maxPagemapSize bounds the pagemap images read whole into memory. A real
// one is about 20 bytes an entry: a 1 GiB pagemap would list 50 million
// runs of pages, far beyond any process.
const maxPagemapSize = 1 << 30

// imageDir is an open image dir. path is for messages; physical (no
// symlink in it) for the chain's bounds.
type imageDir struct {
	path string
	f    *os.File
}

// openImageDir opens the caller's dir (its path is the caller's, trusted;
// what is inside is not).
func openImageDir(path string) (*imageDir, error) {
	phys, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, err
	}
	phys, err = filepath.Abs(phys)
	if err != nil {
		return nil, err
	}
	f, err := openDirAt(unix.AT_FDCWD, phys, phys)
	if err != nil {
		return nil, err
	}
	return &imageDir{path: phys, f: f}, nil
}

func (d *imageDir) close() { d.f.Close() }

func (d *imageDir) fd() int { return int(d.f.Fd()) }

// join is the path of name in d, for messages.
func (d *imageDir) join(name string) string { return filepath.Join(d.path, name) }

// names lists d, sorted.
func (d *imageDir) names() ([]string, error) {
	f, err := openDirAt(d.fd(), ".", d.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.path, err)
	}
	slices.Sort(names)
	return names, nil
}

// lstat stats name in d without following a symlink.
func (d *imageDir) lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := ignoringEINTR(func() error { return unix.Fstatat(d.fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW) })
	if err != nil {
		return st, &fs.PathError{Op: "lstat", Path: d.join(name), Err: err}
	}
	return st, nil
}

// readlink reads symlink name in d.
func (d *imageDir) readlink(name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(d.fd(), name, buf)
		if err != nil {
			return "", &fs.PathError{Op: "readlink", Path: d.join(name), Err: err}
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// fileCheck is what openFile requires of a file besides being regular.
type fileCheck struct {
	oneLink bool  // exactly one link
	minSize int64 // at least this many bytes
	// need says who wants minSize, for the message.
	need string
}

// openFile opens regular file name in d read-only, refusing anything else.
func (d *imageDir) openFile(name string, c fileCheck) (*os.File, error) {
	path := d.join(name)
	st, err := d.lstat(name)
	if err != nil {
		return nil, err
	}
	if err := checkRegular(path, st, c); err != nil {
		return nil, err
	}
	var fd int
	err = ignoringEINTR(func() (err error) {
		fd, err = unix.Openat(d.fd(), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s: %w: a symlink (image files are never followed)", path, ErrUnsafeImage)
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	// What was opened is what was checked (not replaced in between).
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil {
		f.Close()
		return nil, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	if now.Dev != st.Dev || now.Ino != st.Ino {
		f.Close()
		return nil, fmt.Errorf("%s: %w: replaced while being opened", path, ErrUnsafeImage)
	}
	if err := checkRegular(path, now, c); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkFile checks regular file name in d without opening it: a pages
// file flatten keeps as it is.
func (d *imageDir) checkFile(name string, c fileCheck) error {
	st, err := d.lstat(name)
	if err != nil {
		return err
	}
	return checkRegular(d.join(name), st, c)
}

func checkRegular(path string, st unix.Stat_t, c fileCheck) error {
	switch mode := st.Mode & unix.S_IFMT; {
	case mode == unix.S_IFLNK:
		return fmt.Errorf("%s: %w: a symlink (image files are never followed)", path, ErrUnsafeImage)
	case mode != unix.S_IFREG:
		return fmt.Errorf("%s: %w: a %s, not a regular file", path, ErrUnsafeImage, fileType(mode))
	case c.oneLink && st.Nlink != 1:
		return fmt.Errorf("%s: %w: %d hard links (an image file has one: another name could be anywhere)", path, ErrUnsafeImage, st.Nlink)
	case st.Size < c.minSize:
		return fmt.Errorf("%s: %w: %d bytes, %s needs %d", path, ErrCorruptImage, st.Size, c.need, c.minSize)
	}
	return nil
}

func fileType(mode uint32) string {
	switch mode {
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("file of type %#o", mode)
}

// readPagemap reads and decodes pagemap image name of d.
func (d *imageDir) readPagemap(name string) (*pagemapImage, error) {
	path := d.join(name)
	f, err := d.openFile(name, fileCheck{})
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxPagemapSize {
		return nil, fmt.Errorf("%s: %w: %d bytes, more than a pagemap can be (%d)", path, ErrCorruptImage, fi.Size(), maxPagemapSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPagemapSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	p, err := decodePagemap(b)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w: %w", path, ErrCorruptImage, err)
	}
	return p, nil
}

// openDirAt opens directory name relative to dirfd without following a
// symlink in its last component; path names it for messages.
func openDirAt(dirfd int, name, path string) (*os.File, error) {
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		// O_NOFOLLOW|O_DIRECTORY fails a symlink with ELOOP or ENOTDIR.
		var st unix.Stat_t
		if (errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR)) &&
			unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return nil, fmt.Errorf("%s: %w: a symlink (not followed)", path, ErrUnsafeImage)
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// walkDown opens the directory at rel below the open directory root (at
// path rootPath), one component at a time, refusing a symlink anywhere:
// rel is clean and has no "..", so the result cannot be outside root.
func walkDown(root *os.File, rootPath, rel string) (*os.File, error) {
	if rel == "." {
		return openDirAt(int(root.Fd()), ".", rootPath)
	}
	cur, path := root, rootPath
	for _, comp := range strings.Split(rel, "/") {
		if comp == "" || comp == "." || comp == ".." {
			return nil, fmt.Errorf("%s: bad path component %q in %q", rootPath, comp, rel)
		}
		path = filepath.Join(path, comp)
		next, err := openDirAt(int(cur.Fd()), comp, path)
		if cur != root {
			cur.Close()
		}
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// fileID identifies an inode.
type fileID struct{ dev, ino uint64 }

func idOf(f *os.File) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileID{}, &fs.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// mulPages is n pages in bytes, ok false if that overflows an int64 (no
// file or address range can be that large).
func mulPages(n, pageSize uint64) (int64, bool) {
	if pageSize == 0 || n > math.MaxInt64/pageSize {
		return 0, false
	}
	return int64(n * pageSize), true
}
