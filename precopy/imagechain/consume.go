package imagechain

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// FlattenConsuming is Flatten for a dir whose parent is thrown away right
// after (precopy's final dump, flattened while the container is paused):
// instead of copying the parent's pages, it takes the parent's pages file
// over and writes dir's own pages into it, so its cost follows the pages
// dir holds rather than the whole memory.
//
// A pages file has no index: pages follow each other in pagemap (address)
// order. So the parent's pages are where the flat file wants them only up
// to the first page added or removed since the parent; past it, every page
// sits at another offset. FlattenConsuming hard links the parent's pages
// file into dir under a new pages_id and makes it the flat file in one of
// two ways:
//
//   - Exact prefix: the flat file lists the parent's pages at the parent's
//     offsets up to a cut. dir's own (PE_PRESENT) pages in that prefix are
//     written over it at their offsets, and the rest, the tail, is
//     assembled in a temporary file first (it reads parent pages the tail
//     overwrites) and written after the prefix. Taken when the tail is no
//     longer than the prefix: typically a few pages, a stack that grew, a
//     mapping created at the top.
//   - Range shift, on filesystems that move a file's blocks without
//     copying them (ext4, XFS: fallocate FALLOC_FL_COLLAPSE_RANGE and
//     FALLOC_FL_INSERT_RANGE; not tmpfs, where pages only move by copying):
//     the flat file is cut into runs of the parent's pages (kept, patched
//     with dir's own pages as above) and runs from elsewhere (dir's own new
//     pages, pages of deeper ancestors). The parent's pages between two
//     kept runs are collapsed out, room for the others is inserted, then
//     they are written. One page added or removed low in the address space
//     costs one insert or collapse instead of rewriting everything after
//     it. Taken when the exact prefix is not, or would rewrite more than
//     the shift writes. If the filesystem refuses the first insert or
//     collapse, nothing was changed and the exact prefix, or a copy, is
//     done instead.
//
// A pagemap whose layout allows neither, a parent that is not flat there,
// a parent on another filesystem or a failing link is flattened by
// copying, exactly as Flatten does; Result.TakeoverRefused says why.
//
// Contract, beyond Flatten's:
//
//   - The parent is consumed: from the call on, the parent's pages files
//     may hold dir's pages in place of its own, or be shifted, and with
//     success they are shared (same inode) with dir's new ones. The parent
//     must not be restored, dumped against (--prev-images-dir) or otherwise
//     read as an image of its own round after the call, whatever the
//     outcome; and it must not be written to after success. Removing it
//     (unlinking its files) is what the caller is expected to do, and is
//     safe for dir.
//   - On error before the commit point (Result.Flattened false), dir is
//     unchanged. Unless the error is ErrParentConsumed it is still
//     restorable WITH its parent, as with Flatten: the only bytes of the
//     parent that changed are the pages dir holds itself (PE_PRESENT),
//     which a restore of dir never reads from the parent, so the caller may
//     retry with Flatten. With ErrParentConsumed (a tail was written, or a
//     range of the parent's pages file was shifted), the parent lost pages
//     dir needs: dir must be dumped again.
//   - Errors from the commit point on are as Flatten's.
//
// Its checks are Flatten's, and the parent's pages file it takes over must
// be a regular file with one link, which is linked into dir by its
// descriptor: the file written is the one checked, whatever its name
// points to by then. Unlike Flatten's, its chain is bounded only by
// Within: without it a relative parent link may lead anywhere no symlink
// is on the way, as precopy's final dump (in containerd's temp dir, its
// parent among the rounds in the bundle) needs. Since it writes into the
// parent, a caller should pass Within with the dir holding its rounds.
//
// Like Flatten, it must not run while CRIU reads or writes dir or its parent.
func FlattenConsuming(dir string, opts ...Option) (Result, error) {
	start := time.Now()
	res, err := flattenWith(dir, true, opts, nil)
	res.Duration = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("flatten (consuming parent) %s: %w", dir, err)
	}
	return res, nil
}

// takeover is a flat pages file made from the parent's one (base), by an
// exact prefix or a range shift (see FlattenConsuming); at least one of
// them is planned.
type takeover struct {
	base   *os.File
	prefix *prefixPlan // nil: the layout differs too early
	shift  *shiftPlan  // nil: not planned, or the prefix is cheaper
	// prefixWhy is why there is no prefix plan, for a refusal's reason.
	prefixWhy string
	// refused is why write could not take the parent's file over;
	// linkFailed: because the link could not be made or opened.
	refused    error
	linkFailed bool
	// baseID is base's inode, checked again once linked.
	baseID fileID
	// shifted: write took the shift plan (else the prefix one).
	shifted bool
}

// prefixPlan writes patches over the first cut bytes of base and the tail
// after them.
type prefixPlan struct {
	patches []patchOp
	cut     int64
	// tail is the flat file from offset cut on; tailCopied is how many of
	// its bytes come from ancestors (the rest are dir's own).
	tail       copyPlan
	tailCopied int64
}

// patchOp copies n bytes at off of src to dstOff of the new pages file.
type patchOp struct {
	src         *os.File
	off, dstOff int64
	n           int64
}

// addPatch appends a patch to ps, merging it with the last when they
// continue each other.
func addPatch(ps []patchOp, src *os.File, off, dstOff, n int64) []patchOp {
	if k := len(ps); k > 0 {
		last := &ps[k-1]
		if last.src == src && last.off+last.n == off && last.dstOff+last.n == dstOff {
			last.n += n
			return ps
		}
	}
	return append(ps, patchOp{src, off, dstOff, n})
}

func patchBytes(ps []patchOp) int64 {
	var n int64
	for _, p := range ps {
		n += p.n
	}
	return n
}

// size is the number of bytes the prefix plan writes.
func (p *prefixPlan) size() int64 { return p.tail.size() + patchBytes(p.patches) }

// written is the number of bytes the takeover wrote; copied, how many of
// them came from ancestors.
func (t *takeover) written() int64 {
	if t.shifted {
		return t.shift.size()
	}
	return t.prefix.size()
}

func (t *takeover) copied() int64 {
	if t.shifted {
		return t.shift.copied
	}
	return t.prefix.tailCopied
}

// planTakeovers plans, for each job, whether the parent's pages file is
// taken over (see FlattenConsuming). A base file read by another job (two
// pagemaps sharing a pages file, which CRIU never writes) would be read
// after it was patched: that job copies instead. anyFS tries range shifts
// on filesystems known not to have them (tests).
func planTakeovers(jobs []*pagemapJob, c *chain, anyFS bool) error {
	ids := make(map[*os.File]fileID)
	idOfCached := func(f *os.File) (fileID, error) {
		if id, ok := ids[f]; ok {
			return id, nil
		}
		id, err := idOf(f)
		ids[f] = id
		return id, err
	}
	readers := make(map[fileID][]*pagemapJob)
	for _, j := range jobs {
		for _, op := range j.plan.ops {
			id, err := idOfCached(op.src)
			if err != nil {
				return err
			}
			if rs := readers[id]; len(rs) == 0 || rs[len(rs)-1] != j {
				readers[id] = append(rs, j)
			}
		}
	}
	for _, j := range jobs {
		t, why, err := planTakeover(j.name, j.img, j.own, c, &j.plan, anyFS)
		if err != nil {
			return fmt.Errorf("pagemap %s: %w", j.name, err)
		}
		if t == nil {
			j.copyReason = why
			continue
		}
		id, err := idOfCached(t.base)
		if err != nil {
			return err
		}
		for _, other := range readers[id] {
			if other != j {
				t.refused = fmt.Errorf("%s is read by pagemaps %s and %s", t.base.Name(), j.name, other.name)
				break
			}
		}
		// A fill that reads the base file, by its name or another, would
		// read it shifted.
		if t.shift != nil {
		fills:
			for _, s := range t.shift.segs {
				for _, op := range s.fill.ops {
					fid, err := idOfCached(op.src)
					if err != nil {
						return err
					}
					if fid == id {
						t.shift = nil
						break fills
					}
				}
			}
			if t.shift == nil && t.prefix == nil {
				t.refused = errors.New(t.why("it would read the parent's pages file as it moves it"))
			}
		}
		t.baseID = id
		j.takeover = t
	}
	return nil
}

// planTakeover returns the takeover making pagemap name (decoded as img,
// whose PE_PRESENT pages are in own; plan is its flat pages file as a
// copy) flat, or nil and why if taking the parent's pages file over would
// not beat copying. The exact prefix needs the flat file to list the
// parent's pages, each at the offset it has in the parent's pages file, up
// to a cut that leaves a tail no longer than the prefix; the range shift
// (planShift) is planned where the prefix is not enough and the parent's
// filesystem may have it (anyFS: whatever it is).
func planTakeover(name string, img *pagemapImage, own *os.File, c *chain, plan *copyPlan, anyFS bool) (*takeover, string, error) {
	if len(c.dirs) == 0 {
		return nil, "no parent image", nil
	}
	a, err := c.pagemap(0, name)
	if err != nil {
		return nil, "", err
	}
	if a == nil {
		return nil, fmt.Sprintf("the parent has no %s (a process it did not dump)", name), nil
	}
	ps := c.pageSize
	p := &prefixPlan{}
	var out, ownOff int64 // offsets in the flat file and in own
	var differs string    // how the layout first differs from the parent's
walk:
	for _, e := range img.entries {
		vaddr, left := e.vaddr, e.pages
		for left > 0 {
			s, ok := a.index.lookup(vaddr, ps)
			if !ok || s.inParent() || !s.present() || s.off+int64(vaddr-s.vaddr) != out {
				differs = layoutDiffers(vaddr, out, s, ok, a.index, ps)
				break walk
			}
			n := min(left, (s.end(ps)-vaddr)/ps)
			bytes := int64(n * ps)
			if e.present() {
				p.patches = addPatch(p.patches, own, ownOff, out, bytes)
				ownOff += bytes
			}
			out += bytes
			vaddr += n * ps
			left -= n
		}
	}
	p.cut = min(out, a.index.presentBytes)
	total := plan.size()
	if total == 0 {
		return nil, "no pages to write", nil
	}
	t := &takeover{prefix: p}
	if p.cut == 0 || total-p.cut > p.cut {
		t.prefix = nil
		t.prefixWhy = fmt.Sprintf("page layout differs from the parent's at flat offset %d %s of %d bytes: the tail to rewrite (%d bytes) is longer than the prefix kept",
			p.cut, differs, total, total-p.cut)
	} else {
		p.tail = plan.from(p.cut)
		for _, op := range p.tail.ops {
			if op.src != own {
				p.tailCopied += op.n
			}
		}
	}
	var shiftWhy string
	if t.prefix == nil || p.tail.size() > 0 {
		// The parent's dir is on the filesystem of its pages file; the
		// file's own answer is the first insert or collapse.
		if ok, why := rangeShiftable(a.dir.fd(), a.dir.path, ps, anyFS); ok {
			t.shift, shiftWhy = planShift(img, own, a, plan, ps)
		} else {
			shiftWhy = why
		}
		if t.shift != nil && t.prefix != nil && p.tail.size() <= t.shift.size() {
			t.shift = nil // the prefix writes no more
		}
	}
	if t.prefix == nil && t.shift == nil {
		return nil, t.why(shiftWhy), nil
	}
	// Already open when a shift is planned: the pages it keeps unpatched
	// were resolved from it.
	if t.base, err = a.pagesFile(); err != nil {
		return nil, "", err
	}
	return t, "", nil
}

// why is the reason for a copy: the prefix's, and the shift's if it was
// considered (shiftWhy not "").
func (t *takeover) why(shiftWhy string) string {
	if shiftWhy == "" {
		return t.prefixWhy
	}
	return t.prefixWhy + "; shifting ranges instead: " + shiftWhy
}

// layoutDiffers says how the page at vaddr, at offset out of the flat
// file, differs from the parent's (found: s is the parent's span holding
// vaddr): not in the parent, not flat there, or at another offset, pages
// having been added or removed below it since the parent; for removed
// ones, it names the first (the parent's page at offset out).
func layoutDiffers(vaddr uint64, out int64, s span, found bool, x *pageIndex, ps uint64) string {
	switch {
	case !found:
		return fmt.Sprintf("(vaddr %#x, not in the parent's pagemap)", vaddr)
	case s.inParent() || !s.present():
		return fmt.Sprintf("(vaddr %#x, which the parent holds in its own parent: not flat)", vaddr)
	}
	at := s.off + int64(vaddr-s.vaddr)
	if at < out {
		return fmt.Sprintf("(vaddr %#x, at %d in the parent's pages file: %d pages more below it than in the parent)", vaddr, at, (out-at)/int64(ps))
	}
	gone := ""
	for _, p := range x.spans {
		if p.present() && p.off <= out && out < p.off+int64(p.pages*ps) {
			gone = fmt.Sprintf(", the first the parent's page at %#x", p.vaddr+uint64(out-p.off))
			break
		}
	}
	return fmt.Sprintf("(vaddr %#x, at %d in the parent's pages file: %d pages fewer below it than in the parent%s)", vaddr, at, (at-out)/int64(ps), gone)
}

// write makes the new pages file final (a name in r.dir) from t: a hard
// link to the parent's pages file, shifted or patched in place, committed
// by r. It returns false, having changed nothing, when the link cannot be
// made or opened for writing (another filesystem, permissions) or, without
// a prefix plan to fall back on, the filesystem refuses to shift ranges:
// the caller copies instead. ops is the number of inserts and collapses.
func (t *takeover) write(r *replacement, final string) (done bool, ops int, err error) {
	if t.refused != nil {
		return false, 0, nil
	}
	name := tempPrefix + final + ".takeover"
	tmp := filepath.Join(r.dir, name)
	// The open file itself is linked, not a name: it is the regular file
	// with one link that openPages checked, wherever its name leads now.
	if err := linkFile(t.base, r.dirFd, name); err != nil {
		t.linkFailed = true
		t.refused = fmt.Errorf("hard link %s as %s: %w", t.base.Name(), tmp, err)
		return false, 0, nil
	}
	fd, err := unix.Openat(r.dirFd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.linkFailed = true
		t.refused = &fs.PathError{Op: "open", Path: tmp, Err: err}
		unix.Unlinkat(r.dirFd, name, 0)
		return false, 0, nil
	}
	f := os.NewFile(uintptr(fd), tmp)
	// Registered before writing, so that discard unlinks it on error.
	r.addPages(tmp, final)
	err = checkTakenOver(f, t.baseID)
	if err == nil && t.shift != nil {
		ops, err = t.shift.run(r, f, tmp)
		t.shifted = err == nil
		if errors.Is(err, errShiftRefused) {
			// Nothing changed: the prefix plan, or a copy.
			t.shift = nil
			if t.prefix == nil {
				t.refused = errors.New(t.why(err.Error()))
				f.Close()
				r.forgetPages(tmp)
				if uerr := unix.Unlinkat(r.dirFd, name, 0); uerr != nil {
					return false, 0, fmt.Errorf("undo the link %s: %w", tmp, uerr)
				}
				return false, 0, nil
			}
			err = nil
		}
	}
	if err == nil && !t.shifted {
		err = t.prefix.write(r, f, tmp)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err == nil, ops, err
}

// checkTakenOver checks that f, opened by the name just linked, is the
// base file and has two links: its own and the new one.
func checkTakenOver(f *os.File, base fileID) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	if (fileID{uint64(st.Dev), st.Ino}) != base || st.Nlink != 2 || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s: %w: not the parent's pages file with one more link (%d links): changed while flattened", f.Name(), ErrUnsafeImage, st.Nlink)
	}
	return nil
}

// linkFile gives the open file f the name name in directory dirfd. With
// AT_EMPTY_PATH it needs CAP_DAC_READ_SEARCH; through /proc/self/fd it
// needs /proc. Either links the inode f is, never what a name leads to.
func linkFile(f *os.File, dirfd int, name string) error {
	err := unix.Linkat(int(f.Fd()), "", dirfd, name, unix.AT_EMPTY_PATH)
	if err == nil || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EEXIST) {
		return err
	}
	return unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), dirfd, name, unix.AT_SYMLINK_FOLLOW)
}

// write makes f, the parent's pages file linked into dir as name, the
// flat file: patches in place, the tail after the cut.
func (p *prefixPlan) write(r *replacement, f *os.File, name string) error {
	// The tail reads parent pages it is about to overwrite: assemble it
	// aside before touching the file.
	var tail *os.File
	if p.tail.size() > 0 {
		var err error
		if tail, err = os.CreateTemp(r.dir, tempPrefix+"tail-"); err != nil {
			return err
		}
		defer func() {
			tail.Close()
			os.Remove(tail.Name())
		}()
		if err := (&pagesWriter{dst: tail}).run(&p.tail); err != nil {
			return fmt.Errorf("assemble tail of %s: %w", name, err)
		}
	}
	w := &pagesWriter{dst: f}
	for _, op := range p.patches {
		if _, err := f.Seek(op.dstOff, io.SeekStart); err != nil {
			return err
		}
		if err := w.copy(copyOp{op.src, op.off, op.n}); err != nil {
			return fmt.Errorf("patch %d bytes at %d of %s from %d of %s: %w", op.n, op.dstOff, name, op.off, op.src.Name(), err)
		}
	}
	if _, err := f.Seek(p.cut, io.SeekStart); err != nil {
		return err
	}
	if tail != nil {
		// From here the parent's pages past the cut are gone.
		r.parentCut = true
		if err := w.copy(copyOp{tail, 0, p.tail.size()}); err != nil {
			return fmt.Errorf("write tail of %s at %d: %w", name, p.cut, err)
		}
	}
	if err := f.Truncate(p.cut + p.tail.size()); err != nil {
		return err
	}
	return nil
}
