package imagechain

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// A range shift makes the parent's pages file the flat one when pages
// were added or removed below most of the parent's: the parent's pages
// between two runs the flat file keeps are collapsed out of the file
// (FALLOC_FL_COLLAPSE_RANGE), room is inserted (FALLOC_FL_INSERT_RANGE)
// where the flat file has pages the parent's file does not hold, and only
// those and dir's own pages are written. Pages files are dense and have no
// index, so nothing short of moving the bytes puts a page at its new
// offset; ext4 and XFS move a file's extents instead of its data, tmpfs
// has neither operation and can only copy.
//
// The cost is not nothing: ext4_insert_range and ext4_collapse_range
// (fs/ext4/extents.c) first write back every dirty page from the offset to
// EOF (filemap_write_and_wait_range(..., LLONG_MAX)) and drop the page
// cache from there (truncate_pagecache), then shift the extents in a
// journalled transaction. The first operation, lowest in the file, thus
// writes out the part of the parent CRIU just wrote that is still dirty,
// and the pages after it are read from the disk (or the host's cache)
// when the image is restored or packed; later operations find them clean.

// maxShiftSegments bounds a shift plan: each insert or collapse is a
// syscall shifting the extents from its offset to EOF. Real layouts move
// in a handful of places (a page of heap, of .bss, one mapping); thousands
// of runs mean the two layouts have little in common, and copying them
// costs about as much.
const maxShiftSegments = 4096

// shiftPlan is the flat pages file as runs of the parent's pages file
// (keep) and of other files (fill), in order.
type shiftPlan struct {
	segs    []shiftSeg
	patches []patchOp // dir's own pages over kept runs, at flat offsets
	total   int64     // the flat file's size
	// fillBytes is what the fills write; copied, the part of it read from
	// ancestors (the rest is dir's own).
	fillBytes, copied int64
}

type shiftSeg struct {
	keep bool
	off  int64 // in the flat file
	n    int64
	// parentOff (keep): where the run is in the parent's pages file.
	parentOff int64
	// fill (fill): where its bytes come from.
	fill copyPlan
}

// size is the number of bytes the shift plan writes.
func (sp *shiftPlan) size() int64 { return sp.fillBytes + patchBytes(sp.patches) }

// add appends a run to the plan, merging it with the last when it goes on
// where that one ends (in the parent's file too, for kept runs).
func (sp *shiftPlan) add(keep bool, off, parentOff, n int64) {
	if k := len(sp.segs); k > 0 {
		last := &sp.segs[k-1]
		if last.keep == keep && last.off+last.n == off && (!keep || last.parentOff+last.n == parentOff) {
			last.n += n
			return
		}
	}
	sp.segs = append(sp.segs, shiftSeg{keep: keep, off: off, n: n, parentOff: parentOff})
}

// planShift plans the flat file of pagemap img (own pages in own; plan is
// its flat pages file as a copy) as a range shift of parent pagemap a's
// pages file, or returns nil and why not. It walks the flat layout as
// planTakeover does: a page the parent holds in its pages file is kept,
// patched if dir has its own; any other is filled. Kept runs must take the
// parent's pages in file order (both files are in address order, so they
// do unless the parent's pagemap is not), and the plan must keep at least
// as many bytes of the parent's as it writes. That no fill reads the
// parent's pages file, which is being moved, by this name or another, is
// planTakeovers' check (by inode).
func planShift(img *pagemapImage, own *os.File, a *ancestorPagemap, plan *copyPlan, ps uint64) (*shiftPlan, string) {
	sp := &shiftPlan{}
	var out, ownOff int64 // offsets in the flat file and in own
	var pp int64          // the parent's pages file is kept up to pp
	var kept int64        // parent bytes kept and not patched
	for _, e := range img.entries {
		vaddr, left := e.vaddr, e.pages
		for left > 0 {
			var n uint64
			var at int64
			keep := false
			if s, ok := a.index.lookup(vaddr, ps); ok {
				n = min(left, (s.end(ps)-vaddr)/ps)
				if s.present() && !s.inParent() {
					at = s.off + int64(vaddr-s.vaddr)
					keep = at >= pp
					if !keep && !e.present() {
						return nil, fmt.Sprintf("the parent's page at %#x is at %d of its pages file, before pages kept ahead of it (its pagemap is not in address order)", vaddr, at)
					}
				}
			} else {
				n = min(left, (a.index.next(vaddr)-vaddr)/ps)
			}
			bytes := int64(n * ps)
			switch {
			case keep && e.present():
				sp.patches = addPatch(sp.patches, own, ownOff, out, bytes)
				fallthrough
			case keep:
				sp.add(true, out, at, bytes)
				pp = at + bytes
				if !e.present() {
					kept += bytes
				}
			default:
				sp.add(false, out, 0, bytes)
			}
			if e.present() {
				ownOff += bytes
			}
			out += bytes
			vaddr += n * ps
			left -= n
		}
	}
	sp.total = out
	if len(sp.segs) > maxShiftSegments {
		return nil, fmt.Sprintf("the flat file is %d runs of kept and other pages, more than %d", len(sp.segs), maxShiftSegments)
	}
	for i := range sp.segs {
		s := &sp.segs[i]
		if s.keep {
			continue
		}
		s.fill = plan.slice(s.off, s.off+s.n)
		for _, op := range s.fill.ops {
			if op.src != own {
				sp.copied += op.n
			}
		}
		sp.fillBytes += s.n
	}
	if kept == 0 || sp.size() > kept {
		return nil, fmt.Sprintf("it would write %d bytes and keep %d of the parent's", sp.size(), kept)
	}
	return sp, ""
}

// rangeShiftable says whether a range shift may be tried on the filesystem
// of fd (a dir, named path for the message): not on tmpfs or ramfs, which
// have no insert or collapse (unless anyFS, for tests), and only where the
// filesystem's blocks divide a page, since every offset and length is a
// multiple of the page size and both operations want whole blocks. If
// not, it says why, unless the filesystem is one known to have neither
// (a takeover there is as it always was). A failing statfs is a reason,
// not an error: the flatten goes on without a shift.
func rangeShiftable(fd int, path string, pageSize uint64, anyFS bool) (bool, string) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return false, fmt.Sprintf("statfs %s: %v", path, err)
	}
	if !anyFS && (st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC) {
		return false, ""
	}
	if st.Bsize <= 0 || pageSize%uint64(st.Bsize) != 0 {
		return false, fmt.Sprintf("the filesystem's block size (%d) does not divide the page size (%d)", st.Bsize, pageSize)
	}
	return true, ""
}

// errShiftRefused wraps the first insert or collapse's failure when the
// filesystem refused it and nothing changed.
var errShiftRefused = errors.New("the filesystem cannot shift ranges")

// run makes f, the parent's pages file linked into dir as name, the flat
// file: first every insert and collapse, low to high (each moves what
// follows it), then the truncation to the flat size (dropping the parent's
// pages past the last kept run), then the patches and fills at their flat
// offsets. It returns the number of inserts and collapses done. If the
// filesystem refuses the first (EOPNOTSUPP: tmpfs, btrfs, ext4 without
// extents; EINVAL: blocks or clusters larger than a page), the error wraps
// errShiftRefused and f is unchanged. From the first that succeeded on,
// the parent's pages are moved: r.parentCut is set.
func (sp *shiftPlan) run(r *replacement, f *os.File, name string) (ops int, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	shift := func(mode uint32, off, n int64, what string) error {
		err := fallocate(f, mode, off, n)
		if err == nil {
			ops++
			r.parentCut = true
			return nil
		}
		err = fmt.Errorf("fallocate %s at %d (%d bytes) of %s: %w", what, off, n, name, err)
		if ops == 0 && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
			return fmt.Errorf("%w: %w", errShiftRefused, err)
		}
		// Anything else may have left the file half shifted.
		r.parentCut = true
		return err
	}
	// pos is where the flat file is built up to; the parent's pages file
	// follows it from its byte pp on.
	var pos, pp int64
	for _, s := range sp.segs {
		switch {
		case s.keep:
			if gap := s.parentOff - pp; gap > 0 {
				// Never reaches EOF (EINVAL): the kept run follows.
				if err := shift(unix.FALLOC_FL_COLLAPSE_RANGE, pos, gap, "collapse range"); err != nil {
					return ops, err
				}
				size -= gap
			}
			pp = s.parentOff + s.n
		case pos < size:
			if err := shift(unix.FALLOC_FL_INSERT_RANGE, pos, s.n, "insert range"); err != nil {
				return ops, err
			}
			size += s.n
		default:
			// Past the parent's last byte: inserting there is EINVAL;
			// the fill is written at the end instead.
		}
		pos += s.n
	}
	if err := f.Truncate(sp.total); err != nil {
		return ops, err
	}
	w := &pagesWriter{dst: f}
	for _, p := range sp.patches {
		if _, err := f.Seek(p.dstOff, io.SeekStart); err != nil {
			return ops, err
		}
		if err := w.copy(copyOp{p.src, p.off, p.n}); err != nil {
			return ops, fmt.Errorf("patch %d bytes at %d of %s from %d of %s: %w", p.n, p.dstOff, name, p.off, p.src.Name(), err)
		}
	}
	for _, s := range sp.segs {
		if s.keep {
			continue
		}
		if _, err := f.Seek(s.off, io.SeekStart); err != nil {
			return ops, err
		}
		if err := w.run(&s.fill); err != nil {
			return ops, fmt.Errorf("fill %d bytes at %d of %s: %w", s.n, s.off, name, err)
		}
	}
	return ops, nil
}

// fallocate is fallocate(2) on f, retried on EINTR.
func fallocate(f *os.File, mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), mode, off, n)
		if err != unix.EINTR {
			return err
		}
	}
}
