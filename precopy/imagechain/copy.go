package imagechain

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"

	"golang.org/x/sys/unix"
)

// copyBufferSize is the buffer of the read/write fallback.
const copyBufferSize = 1 << 20

// copyPlan is the new pages file as a list of byte ranges of existing pages
// files, in order. Neighbouring ranges of one file are merged, so a run of
// unmodified memory becomes one copy however many entries it spans.
type copyPlan struct {
	ops []copyOp
}

type copyOp struct {
	src *os.File
	off int64
	n   int64
}

func (p *copyPlan) add(src *os.File, off, n int64) {
	if k := len(p.ops); k > 0 {
		last := &p.ops[k-1]
		if last.src == src && last.off+last.n == off {
			last.n += n
			return
		}
	}
	p.ops = append(p.ops, copyOp{src, off, n})
}

// from returns the part of the plan that writes from byte off on.
func (p *copyPlan) from(off int64) copyPlan { return p.slice(off, math.MaxInt64) }

// slice returns the part of the plan that writes bytes [from, to).
func (p *copyPlan) slice(from, to int64) copyPlan {
	var part copyPlan
	var at int64
	for _, op := range p.ops {
		start, end := max(from, at), min(to, at+op.n)
		if start < end {
			part.ops = append(part.ops, copyOp{op.src, op.off + start - at, end - start})
		}
		at += op.n
	}
	return part
}

// size is the number of bytes the plan writes.
func (p *copyPlan) size() int64 {
	var n int64
	for _, op := range p.ops {
		n += op.n
	}
	return n
}

// pagesWriter appends ranges of pages files to dst. It uses
// copy_file_range(2) with explicit source offsets, which stays in the kernel
// (tmpfs copies through the page cache with splice), and falls back to
// pread/write with a large buffer where the kernel refuses (EXDEV across
// filesystems before 5.3 and after 5.19 for most, ENOSYS, EOPNOTSUPP).
type pagesWriter struct {
	dst         *os.File
	noCopyRange bool
	buf         []byte
}

func (w *pagesWriter) run(p *copyPlan) error {
	for _, op := range p.ops {
		if err := w.copy(op); err != nil {
			return fmt.Errorf("copy %d bytes at %d of %s: %w", op.n, op.off, op.src.Name(), err)
		}
	}
	return nil
}

func (w *pagesWriter) copy(op copyOp) error {
	off, left := op.off, op.n
	for left > 0 && !w.noCopyRange {
		n, err := unix.CopyFileRange(int(op.src.Fd()), &off, int(w.dst.Fd()), nil, int(min(left, 1<<30)), 0)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EXDEV || err == unix.ENOSYS || err == unix.EOPNOTSUPP || err == unix.EINVAL:
			w.noCopyRange = true
		case err != nil:
			return err
		case n == 0:
			return io.ErrUnexpectedEOF
		default:
			left -= int64(n)
		}
	}
	if left == 0 {
		return nil
	}
	if w.buf == nil {
		w.buf = make([]byte, copyBufferSize)
	}
	for left > 0 {
		n, err := op.src.ReadAt(w.buf[:min(left, int64(len(w.buf)))], off)
		if n > 0 {
			if _, werr := w.dst.Write(w.buf[:n]); werr != nil {
				return werr
			}
			off += int64(n)
			left -= int64(n)
		}
		if err != nil && left > 0 {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}
