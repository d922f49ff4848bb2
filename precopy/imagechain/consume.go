package imagechain

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// FlattenConsuming is Flatten for a dir whose parent is thrown away right
// after (precopy's final dump, flattened while the container is paused):
// instead of copying the parent's pages, it takes the parent's pages file
// over and writes dir's own pages into it, so its cost follows the pages
// dir holds rather than the whole memory.
//
// It does so for each pagemap whose flat pages file would be byte for byte
// the parent's pages file except for dir's own pages: the parent has the
// pagemap with exactly the same pages (addresses), all PE_PRESENT in the
// parent itself, in the same order. Then the parent's pages file is hard
// linked into dir under a new pages_id, dir's PE_PRESENT pages are written
// over it at their offsets, and the new pagemap lists every page present,
// in that layout. Any other pagemap (pages added or removed since the
// parent, a parent that is not flat, a parent on another filesystem or
// a failing link) is flattened by copying, exactly as Flatten does.
//
// Contract, beyond Flatten's:
//
//   - The parent is consumed: from the call on, the parent's pages files
//     may hold dir's pages in place of its own, and with success they are
//     shared (same inode) with dir's new ones. The parent must not be
//     restored, dumped against (--prev-images-dir) or otherwise read as an
//     image of its own round after the call, whatever the outcome; and it
//     must not be written to after success. Removing it (unlinking its
//     files) is what the caller is expected to do, and is safe for dir.
//   - On error before the commit point (Result.Flattened false), dir is
//     unchanged and still restorable WITH its parent, as with Flatten: the
//     only bytes of the parent that may have changed are the pages dir holds
//     itself (PE_PRESENT), which a restore of dir never reads from the
//     parent. So the caller may retry with Flatten or FlattenConsuming, or
//     restore dir through its parent link; it must not use the parent alone.
//   - Errors from the commit point on are as Flatten's.
//
// Like Flatten, it must not run while CRIU reads or writes dir or its parent.
func FlattenConsuming(dir string) (Result, error) {
	start := time.Now()
	res, err := flatten(dir, uint64(os.Getpagesize()), true)
	res.Duration = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("flatten (consuming parent) %s: %w", dir, err)
	}
	return res, nil
}

// takeover is a flat pages file made from the parent's one (base) by
// writing patches over it.
type takeover struct {
	base    *os.File
	patches []patchOp
}

// patchOp copies n bytes at off of src to dstOff of the new pages file.
type patchOp struct {
	src         *os.File
	off, dstOff int64
	n           int64
}

func (t *takeover) add(src *os.File, off, dstOff, n int64) {
	if k := len(t.patches); k > 0 {
		last := &t.patches[k-1]
		if last.src == src && last.off+last.n == off && last.dstOff+last.n == dstOff {
			last.n += n
			return
		}
	}
	t.patches = append(t.patches, patchOp{src, off, dstOff, n})
}

// size is the number of bytes the patches write.
func (t *takeover) size() int64 {
	var n int64
	for _, p := range t.patches {
		n += p.n
	}
	return n
}

// planTakeover returns the takeover making pagemap name (decoded as img,
// whose PE_PRESENT pages are in own) flat, or nil if the flat pages file
// is not the parent's one with some pages replaced: each page of img, in
// img's order, must be PE_PRESENT in the parent's pagemap at the offset it
// has in the flat file, and the parent must hold no other page.
func planTakeover(name string, img *pagemapImage, own *os.File, c *chain) (*takeover, error) {
	if len(c.dirs) == 0 {
		return nil, nil
	}
	a, err := c.pagemap(0, name)
	if err != nil || a == nil {
		return nil, err
	}
	ps := c.pageSize
	t := &takeover{}
	var out, ownOff int64 // offsets in the flat file and in own
	for _, e := range img.entries {
		vaddr, left := e.vaddr, e.pages
		for left > 0 {
			s, ok := a.index.lookup(vaddr, ps)
			if !ok || s.inParent() || !s.present() || s.off+int64(vaddr-s.vaddr) != out {
				return nil, nil
			}
			n := min(left, (s.end(ps)-vaddr)/ps)
			bytes := int64(n * ps)
			if e.present() {
				t.add(own, ownOff, out, bytes)
				ownOff += bytes
			}
			out += bytes
			vaddr += n * ps
			left -= n
		}
	}
	if out != a.index.presentBytes {
		return nil, nil
	}
	if t.base, err = a.pagesFile(); err != nil {
		return nil, err
	}
	return t, nil
}

// write makes the new pages file final (a name in r.dir) from t: a hard
// link to the parent's pages file, patched in place, committed by r. It
// returns false, having changed nothing, when the link cannot be made or
// opened for writing (another filesystem, permissions): the caller copies
// instead.
func (t *takeover) write(r *replacement, final string) (bool, error) {
	tmp := filepath.Join(r.dir, tempPrefix+final+".takeover")
	if err := os.Link(t.base.Name(), tmp); err != nil {
		return false, nil
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY, 0)
	if err != nil {
		os.Remove(tmp)
		return false, nil
	}
	// Registered before writing, so that discard unlinks it on error.
	r.addPages(tmp, final)
	w := &pagesWriter{dst: f}
	for _, p := range t.patches {
		if _, err = f.Seek(p.dstOff, io.SeekStart); err != nil {
			break
		}
		if err = w.copy(copyOp{p.src, p.off, p.n}); err != nil {
			err = fmt.Errorf("patch %d bytes at %d of %s from %d of %s: %w", p.n, p.dstOff, tmp, p.off, p.src.Name(), err)
			break
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err == nil, err
}
