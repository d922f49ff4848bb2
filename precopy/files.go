package precopy

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The files the engine reads from CRIU's work dir and writes into an
// image dir are in directories others write too (CRIU as root; a
// checkpoint image restored from elsewhere and dumped over), so a name
// there may be a symlink to any file on the host: it is never followed,
// and what is read is bounded.

// openRegular opens path for reading without following a symlink at its
// last component, and checks it is a regular file of at most limit bytes.
func openRegular(path string, limit int64) (*os.File, int64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP {
			return nil, 0, fmt.Errorf("%s: a symlink, not followed", path)
		}
		return nil, 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	switch {
	case !fi.Mode().IsRegular():
		f.Close()
		return nil, 0, fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	case fi.Size() > limit:
		f.Close()
		return nil, 0, fmt.Errorf("%s: %d bytes, more than the %d expected", path, fi.Size(), limit)
	}
	return f, fi.Size(), nil
}

// readRegular reads path as openRegular opens it.
func readRegular(path string, limit int64) ([]byte, error) {
	f, size, err := openRegular(path, limit)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The size is checked, but the file may grow while it is read.
	b, err := io.ReadAll(io.LimitReader(f, size))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// writeInDir writes name in dir through a new file of its own, renamed
// over name: whatever name was (a symlink included) is replaced, never
// written through, and no reader sees it half-written.
func writeInDir(dir, name string, r io.Reader) (retErr error) {
	tmp, err := os.CreateTemp(dir, "."+name+".*") // O_EXCL, mode 0600
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, r); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}
