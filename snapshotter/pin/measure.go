package pin

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	units "github.com/docker/go-units"
)

// Size is what a pin copies.
type Size struct {
	// Bytes is the disk space the layer's regular files take (allocated
	// blocks: the holes of sparse files are not copied), each hard-linked
	// file counted once.
	Bytes int64 `json:"bytes"`
	// ApparentBytes is the sum of the files' sizes, holes included.
	ApparentBytes int64 `json:"apparent_bytes"`
	// Files counts the entries of every kind below the layer's root
	// (regular files, dirs, symlinks, whiteouts, hard links): each one is
	// at least a create and a few metadata calls.
	Files int `json:"files"`
}

func (s Size) String() string {
	return fmt.Sprintf("%s (%s apparent) in %d files",
		units.BytesSize(float64(s.Bytes)), units.BytesSize(float64(s.ApparentBytes)), s.Files)
}

// Measure walks the tree at dir without following symlinks and returns
// its size. It only stats: it costs a small part of a copy.
func Measure(ctx context.Context, dir string) (Size, error) {
	var s Size
	seen := map[inode]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if path == dir {
			if !d.IsDir() {
				return fmt.Errorf("%s is not a directory: %w", dir, errdefs.ErrInvalidArgument)
			}
			return nil
		}
		s.Files++
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Nlink > 1 {
			if seen[inode{st.Dev, st.Ino}] {
				return nil
			}
			seen[inode{st.Dev, st.Ino}] = true
		}
		s.Bytes += st.Blocks * 512 // st_blocks is in 512-byte units whatever the block size
		s.ApparentBytes += st.Size
		return nil
	})
	if err != nil {
		return Size{}, fmt.Errorf("measure %s: %w", dir, err)
	}
	return s, nil
}

type inode struct{ dev, ino uint64 }

// Rate is what copying costs on one kind of filesystem: a fixed part per
// entry and a bandwidth for the data.
type Rate struct {
	BytesPerSecond float64
	PerFile        time.Duration
}

// Estimate is what copying s is expected to take at r.
func (r Rate) Estimate(s Size) time.Duration {
	d := time.Duration(s.Files) * r.PerFile
	if r.BytesPerSecond > 0 {
		d += time.Duration(float64(s.Bytes) / r.BytesPerSecond * float64(time.Second))
	}
	return d
}

// Limit is how large a layer may be pinned: the container stays frozen
// while its layer is copied, and the copy takes room beside the layer. A
// zero field is no limit.
type Limit struct {
	// MaxBytes bounds Size.Bytes.
	MaxBytes int64
	// MaxCopyTime bounds the copy time estimated at Rate.
	MaxCopyTime time.Duration
	// Rate estimates the copy time.
	Rate Rate
}

// ErrTooLarge is the error of a pin refused by its Limit. It is a failed
// precondition, which is what crosses gRPC (errdefs.IsFailedPrecondition).
var ErrTooLarge = fmt.Errorf("writable layer too large to pin: %w", errdefs.ErrFailedPrecondition)

// Check refuses s, the size of the layer at dir, if it is over l.
func (l Limit) Check(dir string, s Size) error {
	if l.MaxBytes > 0 && s.Bytes > l.MaxBytes {
		return fmt.Errorf("%s: %s, over the limit of %s: %w", dir, s, units.BytesSize(float64(l.MaxBytes)), ErrTooLarge)
	}
	if l.MaxCopyTime <= 0 {
		return nil
	}
	if est := l.Rate.Estimate(s); est > l.MaxCopyTime {
		return fmt.Errorf("%s: %s would take about %s to copy, over the limit of %s: %w",
			dir, s, est.Round(time.Millisecond), l.MaxCopyTime, ErrTooLarge)
	}
	return nil
}
