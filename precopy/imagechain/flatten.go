package imagechain

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
	// RangeShifts (FlattenConsuming only) counts the ranges inserted into
	// or collapsed out of parents' pages files taken over, to move their
	// pages to where the flat files have them (see FlattenConsuming). Zero
	// when every takeover kept the parent's layout (an exact prefix).
	RangeShifts int
	// TakeoverRefused (FlattenConsuming only) says, for each pagemap whose
	// pages were copied from the parent instead of taken over, why: its
	// page layout differs from the parent's too early, the parent has no
	// such pagemap, the parent's pages file could not be linked (e.g. the
	// dir and its parent are on different filesystems), ... Empty when
	// every rewritten pagemap took its parent's pages file over.
	TakeoverRefused string
	// TakeoverLinkFailed (FlattenConsuming only): a refusal was the hard
	// link of the parent's pages file into dir, which fails across
	// filesystems.
	TakeoverLinkFailed bool
	// Duration is the wall time Flatten took.
	Duration time.Duration

	refusals int // pagemaps in TakeoverRefused
}

// Option changes how Flatten and FlattenConsuming treat a chain.
type Option func(*options)

type options struct {
	within string // "": the default bound
	// shiftAnyFS tries range shifts on filesystems known not to have
	// them (tmpfs), so that tests see the kernel refuse them.
	shiftAnyFS bool
}

// Within bounds the chain: every ancestor of dir (the dir its parent link
// leads to, and so on) must be root or below it. Parent links are
// resolved without following any symlink, so the bound is where the
// images are, not where their names seem to be. dir itself may be
// anywhere (precopy's final dump is in containerd's temp dir, its parent
// among the rounds in the bundle).
func Within(root string) Option { return func(o *options) { o.within = root } }

// bound is the physical path that o bounds dir's chain to: Within's root,
// or dflt (a path) if unset ("" for none).
func (o options) bound(dflt string) (string, error) {
	root := o.within
	if root == "" {
		if dflt == "" {
			return "/", nil
		}
		root = dflt
	}
	phys, err := filepath.EvalSymlinks(root)
	if err != nil {
		return "", fmt.Errorf("chain bound: %w", err)
	}
	return filepath.Abs(phys)
}

// Flatten makes image dir dir self-contained: every pagemap-*.img gets
// PE_PARENT entries replaced by the pages they refer to, copied from the
// nearest ancestor that has them (through any number of parent links), and
// a pages file holding all its pages; then the parent link is removed.
//
// The images are untrusted: parent links must be relative and stay inside
// the directory holding dir (siblings, as CRIU's rounds are) unless Within
// names another bound, no symlink is followed, image files must be regular
// files with one link, and pagemaps must add up against the pages files;
// otherwise Flatten fails with ErrUnsafeImage or ErrCorruptImage, naming
// the file, before it changes anything. Nothing outside the chain is read.
//
// On error the dir is left as it was, still restorable with its parent,
// unless Result.Flattened is true: then the new images are in place and
// complete, and only removing an old file or the parent link failed. A dir
// without a parent link is left alone (Result.Flattened false), after
// checking that it does not need one. Flatten must not run while CRIU reads
// or writes dir.
func Flatten(dir string, opts ...Option) (Result, error) {
	start := time.Now()
	res, err := flattenWith(dir, false, opts, filepath.Dir)
	res.Duration = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("flatten %s: %w", dir, err)
	}
	return res, nil
}

// flattenWith applies opts, with dflt giving the bound for a dir (nil:
// none), and flattens.
func flattenWith(dir string, consume bool, opts []Option, dflt func(string) string) (Result, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	top, err := openImageDir(dir)
	if err != nil {
		return Result{}, err
	}
	defer top.close()
	var def string
	if dflt != nil {
		def = dflt(top.path)
	}
	bound, err := o.bound(def)
	if err != nil {
		return Result{}, err
	}
	return flatten(top, bound, uint64(os.Getpagesize()), consume, o)
}

// pagemapJob is one pagemap of dir to rewrite, planned and checked before
// anything is written.
type pagemapJob struct {
	name      string
	img       *pagemapImage // as decoded
	own       *os.File      // its pages file, if it has pages
	oldPages  string        // its pages file's path, removed once replaced
	mapMode   os.FileMode   // of the new pagemap: the old one's
	pagesMode os.FileMode   // of the new pages file: the old one's
	flat      *pagemapImage // the new pagemap; pages_id set when written
	plan      copyPlan      // the new pages file, as a copy
	kept      uint64        // pages from own
	copied    uint64        // pages from ancestors
	takeover  *takeover     // FlattenConsuming's plan; nil: copy
	// copyReason is why FlattenConsuming planned no takeover.
	copyReason string
}

// flatten is Flatten, and FlattenConsuming with consume, of the open dir
// top, whose chain must stay inside bound. It reads and checks every
// image it will use and plans every new file first, then writes.
func flatten(top *imageDir, bound string, pageSize uint64, consume bool, o options) (res Result, retErr error) {
	dir := top.path
	names, err := top.names()
	if err != nil {
		return res, err
	}
	if err := removeLeftovers(dir, names); err != nil {
		return res, err
	}
	chainDirs, err := openAncestors(top, bound)
	if err != nil {
		return res, err
	}
	hasParent := len(chainDirs) > 0
	res.Depth = len(chainDirs)
	c := newChain(chainDirs, pageSize)
	defer c.close()

	var jobs []*pagemapJob
	defer func() {
		for _, j := range jobs {
			j.close()
		}
	}()
	pagemapOf := make(map[uint32]string) // pages_id -> pagemap using it
	for _, name := range names {
		if !isPagemapName(name) {
			continue
		}
		img, err := top.readPagemap(name)
		if err != nil {
			return res, err
		}
		index, err := newPageIndex(img, pageSize)
		if err != nil {
			return res, fmt.Errorf("%s: %w", top.join(name), err)
		}
		// Old pages files are deleted once replaced: make sure no other
		// pagemap reads them (CRIU never shares one).
		if other, dup := pagemapOf[img.pagesID]; dup {
			return res, fmt.Errorf("%s and %s: %w: both use %s", other, name, ErrCorruptImage, pagesName(img.pagesID))
		}
		pagemapOf[img.pagesID] = name
		if !img.hasParentEntries() {
			// Kept as they are; the flat image vouches for them (a second
			// name would put another file's bytes into the checkpoint).
			if err := top.checkFile(pagesName(img.pagesID), fileCheck{oneLink: true, minSize: index.presentBytes, need: "its pagemap " + top.join(name)}); err != nil {
				if !(errors.Is(err, fs.ErrNotExist) && index.presentBytes == 0) {
					return res, err
				}
			}
			res.PagesKept += img.presentPages()
			continue
		}
		if !hasParent {
			return res, fmt.Errorf("%w: %s has PE_PARENT entries but %s has no parent link", ErrMissingParentPages, name, dir)
		}
		j, err := planPagemap(top, name, img, index, c)
		if j != nil {
			jobs = append(jobs, j)
		}
		if err != nil {
			return res, fmt.Errorf("pagemap %s: %w", name, err)
		}
	}
	if !hasParent {
		return res, nil
	}
	if consume {
		if err := planTakeovers(jobs, c, o.shiftAnyFS); err != nil {
			return res, err
		}
	}

	r := &replacement{dir: dir, dirFd: top.fd()}
	defer r.discard()
	defer func() {
		if r.parentCut && retErr != nil {
			retErr = fmt.Errorf("%w: %w", ErrParentConsumed, retErr)
		}
	}()
	nextID := unusedPagesID(names)
	for _, j := range jobs {
		if nextID == 0 {
			return res, errors.New("no pages_id left")
		}
		if err := writePagemapJob(j, nextID, r, pageSize, &res); err != nil {
			return res, fmt.Errorf("pagemap %s: %w", j.name, err)
		}
		nextID++
	}
	err = r.commit()
	if err != nil && !errors.Is(err, errCleanup) {
		return res, err
	}
	r.parentCut = false // committed: dir no longer reads its parent
	res.Flattened = true
	// Last, so that any failure before leaves a restorable chain.
	if rerr := os.Remove(top.join(parentLinkName)); rerr != nil {
		err = errors.Join(err, fmt.Errorf("%w: %w", errCleanup, rerr))
	}
	return res, err
}

// planPagemap checks pagemap name of top (decoded as img, indexed as
// index) and its pages file, resolves its PE_PARENT entries through c and
// plans its flat pages file and pagemap.
func planPagemap(top *imageDir, name string, img *pagemapImage, index *pageIndex, c *chain) (*pagemapJob, error) {
	mapPath := top.join(name)
	st, err := top.lstat(name)
	if err != nil {
		return nil, err
	}
	j := &pagemapJob{
		name:     name,
		mapMode:  os.FileMode(st.Mode).Perm(),
		oldPages: top.join(pagesName(img.pagesID)),
		flat:     &pagemapImage{wide: img.wide},
	}
	j.pagesMode = j.mapMode
	var own *os.File
	if need := index.presentBytes; need > 0 {
		if own, err = openPages(top, pagesName(img.pagesID), need, mapPath); err != nil {
			return nil, err
		}
		j.own = own
		fi, err := own.Stat()
		if err != nil {
			return j, err
		}
		j.pagesMode = fi.Mode().Perm()
	}
	ps := c.pageSize
	var ownOff int64
	for _, e := range img.entries {
		n := int64(e.pages * ps) // checked by newPageIndex
		if e.present() {
			j.plan.add(own, ownOff, n)
			ownOff += n
			j.flat.entries = appendMerged(j.flat.entries, e, ps, j.flat.maxEntryPages())
			j.kept += e.pages
			continue
		}
		// PE_PARENT (entryFromProto refused anything else): the same
		// pagemap one level up, as CRIU's try_open_parent opens it.
		err := c.resolve(0, name, e.vaddr, e.pages, func(s segment) {
			j.plan.add(s.src, s.off, int64(s.pages*ps))
			j.flat.entries = appendMerged(j.flat.entries, entry{vaddr: s.vaddr, pages: s.pages, flags: s.flags}, ps, j.flat.maxEntryPages())
			j.copied += s.pages
		})
		if err != nil {
			return j, err
		}
	}
	j.img = img
	return j, nil
}

func (j *pagemapJob) close() {
	if j.own != nil {
		j.own.Close()
	}
}

// writePagemapJob writes j's new pages file (under pages_id newID) and
// pagemap, to be committed by r.
func writePagemapJob(j *pagemapJob, newID uint32, r *replacement, pageSize uint64, res *Result) error {
	res.PagesKept += j.kept
	done := false
	why := j.copyReason
	if t := j.takeover; t != nil {
		var err error
		var ops int
		done, ops, err = t.write(r, pagesName(newID))
		res.RangeShifts += ops
		if err != nil {
			return err
		}
		if !done {
			why = t.refused.Error()
			res.TakeoverLinkFailed = res.TakeoverLinkFailed || t.linkFailed
		}
		if done {
			// Pages from ancestors the takeover wrote (tail or fills)
			// are copied; the parent's it kept are taken over.
			copied := uint64(t.copied()) / pageSize
			res.PagesTakenOver += j.copied - copied
			res.PagesCopied += copied
			res.BytesCopied += t.copied()
			res.BytesWritten += t.written()
		}
	}
	if !done && why != "" {
		res.refused(j.name, why)
	}
	if !done {
		if err := writeNew(r, pagesName(newID), j.pagesMode, true, func(f *os.File) error {
			w := &pagesWriter{dst: f}
			return w.run(&j.plan)
		}); err != nil {
			return err
		}
		res.PagesCopied += j.copied
		res.BytesCopied += int64(j.copied * pageSize)
		res.BytesWritten += j.plan.size()
	}
	j.flat.pagesID = newID
	if err := writeNew(r, j.name, j.mapMode, false, func(f *os.File) error {
		return writePagemap(f, j.flat)
	}); err != nil {
		return err
	}
	r.obsolete = append(r.obsolete, j.oldPages)
	res.Pagemaps++
	return nil
}

// maxRefusals is how many pagemaps' refusals TakeoverRefused spells out;
// past them it only says there are others (a container of many processes
// would otherwise fill its report with them).
const maxRefusals = 3

// refused adds pagemap name's reason to TakeoverRefused.
func (res *Result) refused(name, why string) {
	res.refusals++
	switch {
	case res.refusals <= maxRefusals:
		if res.TakeoverRefused != "" {
			res.TakeoverRefused += "; "
		}
		res.TakeoverRefused += name + ": " + why
	case res.refusals == maxRefusals+1:
		res.TakeoverRefused += "; and other pagemaps"
	}
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
