package imagechain

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// parentLinkName is the symlink CRIU (opts.img_parent, runc --parent-path)
// leaves in an incremental image dir (criu/image.c: CR_PARENT_LINK).
const parentLinkName = "parent"

// maxChainDepth bounds the walk; real chains are a handful of rounds.
const maxChainDepth = 4096

// parentLink returns dir's parent link path and whether it exists. CRIU
// follows anything named "parent" (open_parent), but this package removes
// the link afterwards, so it insists on a symlink.
func parentLink(dir string) (string, bool, error) {
	link := filepath.Join(dir, parentLinkName)
	fi, err := os.Lstat(link)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return link, false, nil
	case err != nil:
		return link, false, err
	case fi.Mode()&fs.ModeSymlink == 0:
		return link, false, fmt.Errorf("%s is a %s, not a symlink", link, fi.Mode().Type())
	}
	return link, true, nil
}

// ancestors returns the image dirs behind dir, nearest first, as resolved
// paths. Each level is resolved on its own (not as dir/parent/parent/...,
// which the kernel stops following after 40 symlinks). A dangling link
// fails, as it fails CRIU's restore even when no page needs the parent
// (try_open_parent). So does a loop.
func ancestors(dir string) ([]string, error) {
	cur, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	first, err := os.Stat(cur)
	if err != nil {
		return nil, err
	}
	seen := []os.FileInfo{first}
	var chain []string
	for {
		link, ok, err := parentLink(cur)
		if err != nil || !ok {
			return chain, err
		}
		next, err := filepath.EvalSymlinks(link)
		if err != nil {
			return nil, fmt.Errorf("parent link %s: %w", link, err)
		}
		fi, err := os.Stat(next)
		if err != nil {
			return nil, fmt.Errorf("parent link %s: %w", link, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("parent link %s: %s is not a directory", link, next)
		}
		for _, s := range seen {
			if os.SameFile(s, fi) {
				return nil, fmt.Errorf("parent link %s: %s is already in the chain (loop)", link, next)
			}
		}
		if len(chain) == maxChainDepth {
			return nil, fmt.Errorf("image chain of %s deeper than %d", dir, maxChainDepth)
		}
		seen = append(seen, fi)
		chain = append(chain, next)
		cur = next
	}
}

// chain serves PE_PARENT lookups over a dir's ancestors, loading each
// ancestor's pagemap and opening its pages file once, on first use.
type chain struct {
	dirs     []string // ancestors, nearest first
	pageSize uint64
	loaded   map[chainKey]*ancestorPagemap
}

type chainKey struct {
	level int // index in dirs
	name  string
}

func newChain(dirs []string, pageSize uint64) *chain {
	return &chain{dirs: dirs, pageSize: pageSize, loaded: make(map[chainKey]*ancestorPagemap)}
}

// ancestorPagemap is a pagemap of one ancestor with its pages file.
type ancestorPagemap struct {
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
	path := filepath.Join(c.dirs[level], name)
	img, err := readPagemap(path)
	if errors.Is(err, fs.ErrNotExist) {
		c.loaded[key] = nil
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	index, err := newPageIndex(img, c.pageSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	a := &ancestorPagemap{path: path, index: index}
	c.loaded[key] = a
	return a, nil
}

// pagesFile opens the ancestor's pages file and checks it holds every page
// its pagemap says it does.
func (a *ancestorPagemap) pagesFile() (*os.File, error) {
	if a.pages != nil {
		return a.pages, nil
	}
	path := filepath.Join(filepath.Dir(a.path), pagesName(a.index.pagesID))
	f, err := openPages(path, a.index.presentBytes)
	if err != nil {
		return nil, err
	}
	a.pages = f
	return f, nil
}

// close closes every pages file opened.
func (c *chain) close() {
	for _, a := range c.loaded {
		if a != nil && a.pages != nil {
			a.pages.Close()
		}
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
		return fmt.Errorf("%w: %s: %#x+%d pages: %s has no %s", ErrMissingParentPages, name, vaddr, pages, c.dirs[level], name)
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

// openPages opens a pages file that must hold at least need bytes. A
// shorter file is a truncated image; longer ones are tolerated (CRIU only
// reads what the pagemap says).
func openPages(path string, need int64) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.Size() < need {
		f.Close()
		return nil, fmt.Errorf("%s: %d bytes, its pagemap needs %d", path, fi.Size(), need)
	}
	return f, nil
}
