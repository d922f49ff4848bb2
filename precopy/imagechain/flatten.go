package imagechain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Result says what Flatten did.
type Result struct {
	// Flattened is false when dir had no parent link: nothing was changed.
	Flattened bool
	// Depth is the number of image dirs behind dir (1: its parent is flat).
	Depth int
	// Pagemaps is the number of pagemap images rewritten: those that had
	// PE_PARENT entries. The others keep their files.
	Pagemaps int
	// PagesKept counts the pages that were in dir's own pages files.
	PagesKept uint64
	// PagesCopied counts the pages copied in from ancestors.
	PagesCopied uint64
	// BytesCopied is PagesCopied in bytes.
	BytesCopied int64
	// BytesWritten is the size of the new pages files: the copied pages
	// plus the kept pages of rewritten pagemaps. For a pages file taken
	// over by FlattenConsuming, only dir's pages written into it count.
	BytesWritten int64
	// PagesTakenOver (FlattenConsuming only) counts the pages resolved
	// from the parent that were not copied: the parent's pages file became
	// the new one, with dir's own pages written over it in place.
	PagesTakenOver uint64
	// Duration is the wall time Flatten took.
	// TakeoverRefused (FlattenConsuming only) says why a parent's pages
	// file could not be taken over and was copied instead, e.g. the dir
	// and its parent are on different filesystems (no hard link).
	TakeoverRefused string
	Duration        time.Duration
}

// Flatten makes image dir dir self-contained: every pagemap-*.img gets
// PE_PARENT entries replaced by the pages they refer to, copied from the
// nearest ancestor that has them (through any number of parent links), and
// a pages file holding all its pages; then the parent link is removed.
//
// On error the dir is left as it was, still restorable with its parent,
// unless Result.Flattened is true: then the new images are in place and
// complete, and only removing an old file or the parent link failed. A dir
// without a parent link is left alone (Result.Flattened false), after
// checking that it does not need one. Flatten must not run while CRIU reads
// or writes dir.
func Flatten(dir string) (Result, error) {
	start := time.Now()
	res, err := flatten(dir, uint64(os.Getpagesize()), false)
	res.Duration = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("flatten %s: %w", dir, err)
	}
	return res, nil
}

// flatten is Flatten, and FlattenConsuming with consume.
func flatten(dir string, pageSize uint64, consume bool) (res Result, retErr error) {
	names, err := dirNames(dir)
	if err != nil {
		return res, err
	}
	if err := removeLeftovers(dir, names); err != nil {
		return res, err
	}
	link, hasParent, err := parentLink(dir)
	if err != nil {
		return res, err
	}
	chainDirs, err := ancestors(dir)
	if err != nil {
		return res, err
	}
	res.Depth = len(chainDirs)
	c := newChain(chainDirs, pageSize)
	defer c.close()

	r := &replacement{dir: dir}
	defer r.discard()
	defer func() {
		if r.parentCut && retErr != nil {
			retErr = fmt.Errorf("%w: %w", ErrParentConsumed, retErr)
		}
	}()
	nextID := unusedPagesID(names)
	pagemapOf := make(map[uint32]string) // pages_id -> pagemap using it
	for _, name := range names {
		if !isPagemapName(name) {
			continue
		}
		img, err := readPagemap(filepath.Join(dir, name))
		if err != nil {
			return res, err
		}
		// Old pages files are deleted once replaced: make sure no other
		// pagemap reads them (CRIU never shares one).
		if other, dup := pagemapOf[img.pagesID]; dup {
			return res, fmt.Errorf("%s and %s both use %s", other, name, pagesName(img.pagesID))
		}
		pagemapOf[img.pagesID] = name
		if !img.hasParentEntries() {
			res.PagesKept += img.presentPages()
			continue
		}
		if !hasParent {
			return res, fmt.Errorf("%w: %s has PE_PARENT entries but %s has no parent link", ErrMissingParentPages, name, dir)
		}
		if nextID == 0 {
			return res, errors.New("no pages_id left")
		}
		if err := flattenPagemap(dir, name, img, nextID, c, r, consume, &res); err != nil {
			return res, fmt.Errorf("pagemap %s: %w", name, err)
		}
		nextID++
	}
	if !hasParent {
		return res, nil
	}
	err = r.commit()
	if err != nil && !errors.Is(err, errCleanup) {
		return res, err
	}
	r.parentCut = false // committed: dir no longer reads its parent
	res.Flattened = true
	// Last, so that any failure before leaves a restorable chain.
	if rerr := os.Remove(link); rerr != nil {
		err = errors.Join(err, fmt.Errorf("%w: %w", errCleanup, rerr))
	}
	return res, err
}

// flattenPagemap writes the flat version of pagemap name (decoded as img)
// and its pages file, to be committed by r. With consume, the pages file
// is the parent's one patched in place when the layouts allow it (see
// FlattenConsuming).
func flattenPagemap(dir, name string, img *pagemapImage, newID uint32, c *chain, r *replacement, consume bool, res *Result) error {
	mapPath := filepath.Join(dir, name)
	mapInfo, err := os.Stat(mapPath)
	if err != nil {
		return err
	}
	pagesMode := mapInfo.Mode()
	oldPages := filepath.Join(dir, pagesName(img.pagesID))
	var own *os.File
	if need := int64(img.presentPages() * c.pageSize); need > 0 {
		if own, err = openPages(oldPages, need); err != nil {
			return err
		}
		defer own.Close()
		fi, err := own.Stat()
		if err != nil {
			return err
		}
		pagesMode = fi.Mode()
	}

	flat := &pagemapImage{pagesID: newID, wide: img.wide}
	var plan copyPlan
	var ownOff int64
	var kept, copied uint64
	for _, e := range img.entries {
		if e.vaddr%c.pageSize != 0 {
			return fmt.Errorf("pagemap entry %s: not page aligned", e)
		}
		if e.present() {
			n := int64(e.pages * c.pageSize)
			plan.add(own, ownOff, n)
			ownOff += n
			flat.entries = appendMerged(flat.entries, e, c.pageSize, flat.maxEntryPages())
			kept += e.pages
			continue
		}
		// PE_PARENT (entryFromProto refused anything else): the same
		// pagemap one level up, as CRIU's try_open_parent opens it.
		err := c.resolve(0, name, e.vaddr, e.pages, func(s segment) {
			plan.add(s.src, s.off, int64(s.pages*c.pageSize))
			flat.entries = appendMerged(flat.entries, entry{vaddr: s.vaddr, pages: s.pages, flags: s.flags}, c.pageSize, flat.maxEntryPages())
			copied += s.pages
		})
		if err != nil {
			return err
		}
	}

	res.PagesKept += kept
	done := false
	if consume {
		t, err := planTakeover(name, img, own, c, &plan)
		if err != nil {
			return err
		}
		if t != nil {
			if done, err = t.write(r, pagesName(newID)); err != nil {
				return err
			}
			if !done && res.TakeoverRefused == "" {
				res.TakeoverRefused = t.refused.Error()
			}
		}
		if done {
			tailCopied := uint64(t.tailCopied) / c.pageSize
			res.PagesTakenOver += copied - tailCopied
			res.PagesCopied += tailCopied
			res.BytesCopied += t.tailCopied
			res.BytesWritten += t.size()
		}
	}
	if !done {
		if err := writeNew(r, pagesName(newID), pagesMode, true, func(f *os.File) error {
			w := &pagesWriter{dst: f}
			return w.run(&plan)
		}); err != nil {
			return err
		}
		res.PagesCopied += copied
		res.BytesCopied += int64(copied * c.pageSize)
		res.BytesWritten += plan.size()
	}

	if err := writeNew(r, name, mapInfo.Mode(), false, func(f *os.File) error {
		return writePagemap(f, flat)
	}); err != nil {
		return err
	}
	r.obsolete = append(r.obsolete, oldPages)
	res.Pagemaps++
	return nil
}

// writeNew writes a temporary file for final through write and registers
// it with r.
func writeNew(r *replacement, final string, mode os.FileMode, isPages bool, write func(*os.File) error) error {
	f, err := r.create(final, mode)
	if err != nil {
		return err
	}
	// Registered before writing, so that discard removes it on error.
	if isPages {
		r.addPages(f.Name(), final)
	} else {
		r.addPagemap(f.Name(), final)
	}
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// dirNames lists dir, sorted.
func dirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// unusedPagesID returns a pages_id above every pages file in the dir (0 if
// none is left). CRIU numbers pages files from a global counter per dump
// (page_ids), so anything above the largest is free.
func unusedPagesID(names []string) uint32 {
	var maxID uint32
	for _, name := range names {
		if id, ok := pagesID(name); ok && id > maxID {
			maxID = id
		}
	}
	return maxID + 1 // wraps to 0 at the limit
}
