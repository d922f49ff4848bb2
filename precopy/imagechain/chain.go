package imagechain

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// parentLinkName is the symlink CRIU (opts.img_parent, runc --parent-path)
// leaves in an incremental image dir (criu/image.c: CR_PARENT_LINK).
const parentLinkName = "parent"

// maxChainDepth bounds the walk, and the dirs held open: real chains are a
// handful of rounds (precopy's io.precopy.max-rounds is at most 20).
const maxChainDepth = 256

// parentLink reads d's parent link: its target, and whether there is one.
// CRIU follows anything named "parent" (open_parent), but this package
// removes the link afterwards, so it insists on a symlink.
func parentLink(d *imageDir) (string, bool, error) {
	st, err := d.lstat(parentLinkName)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", false, nil
	case err != nil:
		return "", false, err
	case st.Mode&unix.S_IFMT != unix.S_IFLNK:
		return "", false, fmt.Errorf("%s: %w: a %s, not a symlink", d.join(parentLinkName), ErrUnsafeImage, fileType(st.Mode&unix.S_IFMT))
	}
	target, err := d.readlink(parentLinkName)
	return target, err == nil, err
}

// openAncestors opens the image dirs behind top, nearest first. Each
// parent link must be relative and lead, without a symlink on the way,
// into bound (a physical path; "/" for any): its target is resolved as a
// path (top's physical path, joined with each link in turn, cleaned), and
// that path is opened down from bound one directory at a time with
// O_NOFOLLOW, so neither a symlinked directory nor a "..", nor a rename
// while this runs, can take it elsewhere. A dangling link fails, as it
// fails CRIU's restore even when no page needs the parent
// (try_open_parent). So does a loop.
func openAncestors(top *imageDir, bound string) (_ []*imageDir, retErr error) {
	root, err := openDirAt(unix.AT_FDCWD, bound, bound)
	if err != nil {
		return nil, fmt.Errorf("chain bound: %w", err)
	}
	defer root.Close()
	topID, err := idOf(top.f)
	if err != nil {
		return nil, err
	}
	seen := []fileID{topID}
	var chain []*imageDir
	defer func() {
		if retErr != nil {
			for _, d := range chain {
				d.close()
			}
		}
	}()
	for cur := top; ; {
		target, ok, err := parentLink(cur)
		if err != nil || !ok {
			return chain, err
		}
		link := cur.join(parentLinkName)
		if target == "" || filepath.IsAbs(target) {
			return nil, fmt.Errorf("parent link %s -> %q: %w: not a relative path (an absolute one can point anywhere)", link, target, ErrUnsafeImage)
		}
		next := filepath.Join(cur.path, target)
		rel, err := filepath.Rel(bound, next)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return nil, fmt.Errorf("parent link %s -> %s: %w: leads to %s, outside %s, where the chain must stay", link, target, ErrUnsafeImage, next, bound)
		}
		f, err := walkDown(root, bound, rel)
		if err != nil {
			return nil, fmt.Errorf("parent link %s -> %s: %w", link, target, err)
		}
		d := &imageDir{path: next, f: f}
		id, err := idOf(f)
		if err != nil {
			d.close()
			return nil, err
		}
		if slices.Contains(seen, id) {
			d.close()
			return nil, fmt.Errorf("parent link %s: %w: %s is already in the chain (loop)", link, ErrUnsafeImage, next)
		}
		if len(chain) == maxChainDepth {
			d.close()
			return nil, fmt.Errorf("image chain of %s: %w: deeper than %d", top.path, ErrUnsafeImage, maxChainDepth)
		}
		seen = append(seen, id)
		chain = append(chain, d)
		cur = d
	}
}

// chain serves PE_PARENT lookups over a dir's ancestors, loading each
// ancestor's pagemap and opening its pages file once, on first use.
type chain struct {
	dirs     []*imageDir // ancestors, nearest first
	pageSize uint64
	loaded   map[chainKey]*ancestorPagemap
}

type chainKey struct {
	level int // index in dirs
	name  string
}

func newChain(dirs []*imageDir, pageSize uint64) *chain {
	return &chain{dirs: dirs, pageSize: pageSize, loaded: make(map[chainKey]*ancestorPagemap)}
}

// ancestorPagemap is a pagemap of one ancestor with its pages file.
type ancestorPagemap struct {
	dir   *imageDir
	path  string
	index *pageIndex
	pages *os.File // nil until a page is read
}

// pagemap returns pagemap name of ancestor level, or nil if that ancestor
// has none (a task or shm that did not exist then: CRIU treats a missing
// image as empty and the page_read as having no parent).
func (c *chain) pagemap(level int, name string) (*ancestorPagemap, error) {
	key := chainKey{level, name}
	if a, ok := c.loaded[key]; ok {
		return a, nil
	}
	d := c.dirs[level]
	img, err := d.readPagemap(name)
	if errors.Is(err, fs.ErrNotExist) {
		c.loaded[key] = nil
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	path := d.join(name)
	index, err := newPageIndex(img, c.pageSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	a := &ancestorPagemap{dir: d, path: path, index: index}
	c.loaded[key] = a
	return a, nil
}

// pagesFile opens the ancestor's pages file and checks it holds every page
// its pagemap says it does.
func (a *ancestorPagemap) pagesFile() (*os.File, error) {
	if a.pages != nil {
		return a.pages, nil
	}
	f, err := openPages(a.dir, pagesName(a.index.pagesID), a.index.presentBytes, a.path)
	if err != nil {
		return nil, err
	}
	a.pages = f
	return f, nil
}

// close closes every pages file and dir opened.
func (c *chain) close() {
	for _, a := range c.loaded {
		if a != nil && a.pages != nil {
			a.pages.Close()
		}
	}
	for _, d := range c.dirs {
		d.close()
	}
}

// segment is a run of pages found in an ancestor's pages file.
type segment struct {
	vaddr uint64
	pages uint64
	flags uint32 // the ancestor entry's, without PE_PARENT
	src   *os.File
	off   int64
}

// resolve finds pages [vaddr, vaddr+pages) of pagemap name, starting at
// ancestor level, and hands them to emit in address order. Like CRIU's
// read_parent_page, it splits the range where the ancestor's entries end
// and goes one level further up for the ancestor's own PE_PARENT entries.
func (c *chain) resolve(level int, name string, vaddr, pages uint64, emit func(segment)) error {
	if level >= len(c.dirs) {
		return fmt.Errorf("%w: %s: %#x+%d pages: the chain ends before them", ErrMissingParentPages, name, vaddr, pages)
	}
	a, err := c.pagemap(level, name)
	if err != nil {
		return err
	}
	if a == nil {
		return fmt.Errorf("%w: %s: %#x+%d pages: %s has no %s", ErrMissingParentPages, name, vaddr, pages, c.dirs[level].path, name)
	}
	for pages > 0 {
		s, ok := a.index.lookup(vaddr, c.pageSize)
		if !ok {
			return fmt.Errorf("%w: page %#x not in %s", ErrMissingParentPages, vaddr, a.path)
		}
		n := min(pages, (s.end(c.pageSize)-vaddr)/c.pageSize)
		if s.inParent() {
			if err := c.resolve(level+1, name, vaddr, n, emit); err != nil {
				return err
			}
		} else {
			f, err := a.pagesFile()
			if err != nil {
				return err
			}
			emit(segment{
				vaddr: vaddr,
				pages: n,
				flags: s.flags,
				src:   f,
				off:   s.off + int64(vaddr-s.vaddr),
			})
		}
		vaddr += n * c.pageSize
		pages -= n
	}
	return nil
}

// openPages opens pages file name of d, which pagemap (a path, for the
// message) needs need bytes of. A shorter file is a truncated image;
// longer ones are tolerated (CRIU only reads what the pagemap says). It
// must have one link: its bytes are copied into the flat image, or the
// file itself is taken over and written.
func openPages(d *imageDir, name string, need int64, pagemap string) (*os.File, error) {
	return d.openFile(name, fileCheck{oneLink: true, minSize: need, need: "its pagemap " + pagemap})
}
