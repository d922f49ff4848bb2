package imagechain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// tempPrefix marks this package's temporary files in an image dir. Leftovers
// of a killed Flatten are removed by the next one.
const tempPrefix = ".flatten-"

// replacement collects the new files of a flatten and swaps them in at the
// end, so that on any error the dir is as it was.
//
// Each rewritten pagemap gets a new pages file under a pages_id not used in
// the dir, so renaming the pagemap alone switches a task from the old
// (parent-dependent) pages to the new (flat) ones atomically: there is no
// moment where a pagemap and its pages file disagree. The old pages files
// are removed after every pagemap is in place.
type replacement struct {
	dir      string
	dirFd    int           // dir, open
	pages    []pendingFile // new pages files, new names
	pagemaps []pendingFile // new pagemaps, replacing existing ones
	obsolete []string      // old pages files, removed after commit
	done     bool
	// parentCut is set once a takeover rewrote or moved parent pages
	// that dir still reads through its parent link (FlattenConsuming's
	// tails and range shifts).
	parentCut bool
}

type pendingFile struct {
	tmp, final string
}

// create opens a temporary file that commit renames to final (a name in
// dir), with the permissions of like.
func (r *replacement) create(final string, like os.FileMode) (*os.File, error) {
	f, err := os.CreateTemp(r.dir, tempPrefix+final+".")
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(like.Perm()); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}

// addPages and addPagemap register a written temporary file.
func (r *replacement) addPages(tmp, final string) {
	r.pages = append(r.pages, pendingFile{tmp, final})
}

// forgetPages unregisters a pages file added last, removed by its writer.
func (r *replacement) forgetPages(tmp string) {
	if k := len(r.pages); k > 0 && r.pages[k-1].tmp == tmp {
		r.pages = r.pages[:k-1]
	}
}

func (r *replacement) addPagemap(tmp, final string) {
	r.pagemaps = append(r.pagemaps, pendingFile{tmp, final})
}

// discard removes the temporary files of an uncommitted replacement.
func (r *replacement) discard() {
	if r.done {
		return
	}
	for _, p := range append(r.pages, r.pagemaps...) {
		os.Remove(p.tmp)
	}
}

// commit renames the new pages files to their (unused) names, then each
// new pagemap over its original, keeping a hard link to the original so a
// failed rename can be undone. On error it restores the dir.
func (r *replacement) commit() error {
	var renamedPages []string
	var renamedMaps []pendingFile // final and the backup of the original
	undo := func(err error) error {
		for _, m := range renamedMaps {
			if uerr := os.Rename(m.tmp, m.final); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: restore %s: %w", m.final, uerr))
			}
		}
		for _, p := range renamedPages {
			os.Remove(p)
		}
		r.discard()
		return err
	}
	for _, p := range r.pages {
		final := filepath.Join(r.dir, p.final)
		if _, err := os.Lstat(final); err == nil {
			return undo(fmt.Errorf("commit: %s exists", final))
		}
		if err := os.Rename(p.tmp, final); err != nil {
			return undo(fmt.Errorf("commit: %w", err))
		}
		renamedPages = append(renamedPages, final)
	}
	for _, m := range r.pagemaps {
		final := filepath.Join(r.dir, m.final)
		backup := m.tmp + ".orig"
		if err := os.Link(final, backup); err != nil {
			return undo(fmt.Errorf("commit: keep %s: %w", final, err))
		}
		if err := os.Rename(m.tmp, final); err != nil {
			os.Remove(backup)
			return undo(fmt.Errorf("commit: %w", err))
		}
		renamedMaps = append(renamedMaps, pendingFile{tmp: backup, final: final})
	}
	r.done = true
	// Committed: what is left is garbage. Report failures to remove it,
	// though the images are complete and consistent either way.
	var errs []error
	for _, m := range renamedMaps {
		if err := os.Remove(m.tmp); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range r.obsolete {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", errCleanup, err)
	}
	return nil
}

// errCleanup wraps failures that happen after the new images are in place.
var errCleanup = errors.New("flattened, but cleaning up failed")

// removeLeftovers deletes temporary files a killed Flatten left in dir.
func removeLeftovers(dir string, names []string) error {
	for _, name := range names {
		if strings.HasPrefix(name, tempPrefix) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}
