package precopy

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

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

// criuLogTail bounds how much of the end of CRIU's log criuErrors reads.
const criuLogTail = 64 << 10

// criuErrors is the last few error lines of the CRIU log (dump.log) in a
// dump's work dir, joined, or "". runc's error for a failed dump says
// only that CRIU failed and where its log was, and the log goes with the
// rounds or the work dir; these lines say why (no space left, a task
// gone, ...).
func criuErrors(workDir string) string {
	f, size, err := openRegular(filepath.Join(workDir, "dump.log"), 1<<62)
	if err != nil {
		return ""
	}
	defer f.Close()
	off := max(size-criuLogTail, 0)
	b := make([]byte, size-off)
	n, _ := f.ReadAt(b, off)
	var errs []string
	for _, line := range strings.Split(string(b[:n]), "\n") {
		if strings.Contains(line, "Error (") {
			errs = append(errs, strings.TrimSpace(line[strings.Index(line, "Error ("):]))
		}
	}
	if len(errs) > 3 {
		errs = errs[len(errs)-3:]
	}
	return strings.Join(errs, "; ")
}

// withCRIUErrors adds what CRIU's log in workDir says went wrong to err.
func withCRIUErrors(err error, workDir string) error {
	if why := criuErrors(workDir); why != "" {
		return fmt.Errorf("%w; CRIU's log: %s", err, why)
	}
	return err
}
