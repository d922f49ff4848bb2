package imagechain

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests here hand Flatten and FlattenConsuming image dirs made by
// someone else (a checkpoint image travels between machines and is
// restored by root): each must be refused with an error naming the file,
// and nothing outside the chain may be read into the image or written.

// hostileChain is a chain (writeSameLayoutChain: d2 on a flat d1, the
// layout FlattenConsuming takes over) under root/chain, next to
// root/outside: a secret file and a valid image dir with d1's layout, the
// targets of links planted in the chain.
type hostileChain struct {
	root, chain, outside string
	d1, d2               string
	secret               string // outside/secret: 64 pages of 'S'
	outsideImg           string // outside/img: a flat image dir
}

func newHostileChain(t *testing.T) *hostileChain {
	t.Helper()
	root := t.TempDir()
	h := &hostileChain{
		root:    root,
		chain:   filepath.Join(root, "chain"),
		outside: filepath.Join(root, "outside"),
	}
	h.d1, h.d2 = filepath.Join(h.chain, "d1"), filepath.Join(h.chain, "d2")
	h.secret = filepath.Join(h.outside, "secret")
	h.outsideImg = filepath.Join(h.outside, "img")
	writeSameLayoutChain(t, h.chain, false)
	writeFakeDir(t, h.outsideImg, "outside", "",
		fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{
			{0x100, 8, pel}, {0x110, 4, pe}, {0x120, 16, pel},
		}},
		fakePagemap{name: "pagemap-2.img", pagesID: 2, entries: []fakeEntry{{0x200, 4, pe}}},
		fakePagemap{name: "pagemap-shmem-77.img", pagesID: 3, entries: []fakeEntry{{0, 8, pe}}},
	)
	if err := os.WriteFile(h.secret, bytes.Repeat([]byte("S"), 64*int(pageSize)), 0o600); err != nil {
		t.Fatal(err)
	}
	return h
}

// replaceWithSymlink makes path a symlink to target.
func replaceWithSymlink(t *testing.T, path, target string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// replaceWithHardLink makes path a second name of target.
func replaceWithHardLink(t *testing.T, path, target string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(target, path); err != nil {
		t.Fatal(err)
	}
}

// fileState records what a file is: its bytes (or link target), size and
// modification time, without following a symlink.
type fileState struct {
	digest string
	size   int64
	mtime  int64
	mode   fs.FileMode
}

// treeState records every file under dir.
func treeState(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	files := make(map[string]fileState)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := fileState{size: fi.Size(), mtime: fi.ModTime().UnixNano(), mode: fi.Mode()}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			st.digest = "-> " + target
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			st.digest = fmt.Sprintf("%x", sum[:8])
		}
		files[path] = st
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// sameTree fails unless dir's files are what treeState saw: same bytes,
// size, mode and modification time, none added or removed.
func sameTree(t *testing.T, got, want map[string]fileState) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("%s: removed", p)
		case g.digest != w.digest || g.size != w.size:
			t.Errorf("%s: content changed (%d bytes %s, was %d bytes %s)", p, g.size, g.digest, w.size, w.digest)
		case g.mtime != w.mtime:
			t.Errorf("%s: modified (mtime %d, was %d)", p, g.mtime, w.mtime)
		case g.mode != w.mode:
			t.Errorf("%s: mode %v, was %v", p, g.mode, w.mode)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: new file", p)
		}
	}
}

// flatteners are the package's two entry points.
var flatteners = []struct {
	name    string
	flatten func(string, ...Option) (Result, error)
}{
	{"Flatten", Flatten},
	{"FlattenConsuming", FlattenConsuming},
}

// refused runs flatten on h.d2 and checks it fails with an error that
// says mention, leaving the outside and d2 (and, for Flatten, d1) as they
// were.
func refused(t *testing.T, h *hostileChain, flatten func(string, ...Option) (Result, error), consuming bool, mention string, opts ...Option) {
	t.Helper()
	outside := treeState(t, h.outside)
	d2 := treeState(t, h.d2)
	d1 := treeState(t, h.d1)
	res, err := flatten(h.d2, opts...)
	t.Log(err)
	switch {
	case err == nil:
		t.Errorf("flatten succeeded: %+v", res)
	case res.Flattened:
		t.Errorf("flatten failed after its commit point: %+v", res)
	case !strings.Contains(err.Error(), mention):
		t.Errorf("error %q does not mention %q", err, mention)
	}
	sameTree(t, treeState(t, h.outside), outside)
	sameTree(t, treeState(t, h.d2), d2)
	if !consuming {
		sameTree(t, treeState(t, h.d1), d1)
	}
}

func TestHostileSymlinkedOwnPages(t *testing.T) {
	for _, f := range flatteners {
		t.Run(f.name, func(t *testing.T) {
			h := newHostileChain(t)
			own := filepath.Join(h.d2, pagesName(4)) // pagemap-1's, 7 pages
			replaceWithSymlink(t, own, h.secret)
			refused(t, h, f.flatten, f.name == "FlattenConsuming", own)
		})
	}
}

func TestHostileSymlinkedParentPages(t *testing.T) {
	for _, f := range flatteners {
		t.Run(f.name, func(t *testing.T) {
			h := newHostileChain(t)
			// d1's pagemap-1 pages: Flatten copies them, FlattenConsuming
			// takes the file over and writes d2's pages into it.
			base := filepath.Join(h.d1, pagesName(1))
			replaceWithSymlink(t, base, h.secret)
			refused(t, h, f.flatten, f.name == "FlattenConsuming", base)
		})
	}
}

func TestHostileHardLinkedParentPages(t *testing.T) {
	for _, f := range flatteners {
		t.Run(f.name, func(t *testing.T) {
			h := newHostileChain(t)
			base := filepath.Join(h.d1, pagesName(1))
			replaceWithHardLink(t, base, h.secret)
			refused(t, h, f.flatten, f.name == "FlattenConsuming", base)
		})
	}
}

func TestHostileHardLinkedOwnPages(t *testing.T) {
	for _, f := range flatteners {
		t.Run(f.name, func(t *testing.T) {
			h := newHostileChain(t)
			own := filepath.Join(h.d2, pagesName(4))
			replaceWithHardLink(t, own, h.secret)
			refused(t, h, f.flatten, f.name == "FlattenConsuming", own)
		})
	}
}

func TestHostileSymlinkedPagemap(t *testing.T) {
	for _, f := range flatteners {
		for _, d := range []string{"d1", "d2"} {
			t.Run(f.name+"/"+d, func(t *testing.T) {
				h := newHostileChain(t)
				pm := filepath.Join(h.chain, d, "pagemap-1.img")
				replaceWithSymlink(t, pm, filepath.Join(h.outsideImg, "pagemap-1.img"))
				refused(t, h, f.flatten, f.name == "FlattenConsuming", pm)
			})
		}
	}
}

func TestHostileAbsoluteParent(t *testing.T) {
	for _, f := range flatteners {
		for _, target := range []string{"d1", "outside"} {
			t.Run(f.name+"/"+target, func(t *testing.T) {
				h := newHostileChain(t)
				abs := h.d1
				if target == "outside" {
					abs = h.outsideImg
				}
				link := filepath.Join(h.d2, parentLinkName)
				replaceWithSymlink(t, link, abs)
				refused(t, h, f.flatten, f.name == "FlattenConsuming", link)
			})
		}
	}
}

// TestHostileEscapingParent points d2's parent out of the chain with "..":
// refused by Flatten, which bounds the chain to the dir holding d2 unless
// told otherwise, and by both with Within.
func TestHostileEscapingParent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flatten func(string, ...Option) (Result, error)
		within  bool
	}{
		{"Flatten", Flatten, false},
		{"Flatten/Within", Flatten, true},
		{"FlattenConsuming/Within", FlattenConsuming, true},
	} {
		for _, way := range []struct{ name, target string }{
			{"up", "../../outside/img"},
			{"down-and-up", "../d1/../../outside/img"},
			{"above-root", ""},
		} {
			t.Run(tc.name+"/"+way.name, func(t *testing.T) {
				h := newHostileChain(t)
				link := filepath.Join(h.d2, parentLinkName)
				target := way.target
				if target == "" {
					// Climbs to / (and "above" it) and back down: the
					// outside image by another way.
					target = strings.Repeat("../", 64) + strings.TrimPrefix(h.outsideImg, "/")
				}
				replaceWithSymlink(t, link, target)
				var opts []Option
				if tc.within {
					opts = append(opts, Within(h.chain))
				}
				refused(t, h, tc.flatten, strings.HasPrefix(tc.name, "FlattenConsuming"), link, opts...)
			})
		}
	}
}

// TestHostileParentThroughSymlink reaches the parent through a symlinked
// directory: refused whatever the bound, as no symlink is followed.
func TestHostileParentThroughSymlink(t *testing.T) {
	for _, f := range flatteners {
		t.Run(f.name, func(t *testing.T) {
			h := newHostileChain(t)
			// chain/via -> ../outside: "../via/img" looks like a sibling.
			if err := os.Symlink("../outside", filepath.Join(h.chain, "via")); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(h.d2, parentLinkName)
			replaceWithSymlink(t, link, "../via/img")
			refused(t, h, f.flatten, f.name == "FlattenConsuming", link)
		})
	}
}

// TestWithinAcceptsChainElsewhere is precopy's final dump: the image dir
// is in containerd's temp dir, its parent in the rounds dir, reached by a
// relative link climbing out of the image dir's tree.
func TestWithinAcceptsChainElsewhere(t *testing.T) {
	for _, f := range flatteners {
		t.Run(f.name, func(t *testing.T) {
			root := t.TempDir()
			rounds := filepath.Join(root, "state", "bundle", "rounds")
			writeSameLayoutChain(t, rounds, false)
			final := filepath.Join(root, "tmp", "checkpoint-1")
			if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(filepath.Join(rounds, "d2"), final); err != nil {
				t.Fatal(err)
			}
			replaceWithSymlink(t, filepath.Join(final, parentLinkName), "../../state/bundle/rounds/d1")
			want := memoryOfDir(t, final)
			if _, err := f.flatten(final, Within(rounds)); err != nil {
				t.Fatal(err)
			}
			checkFlat(t, final)
			if err := os.RemoveAll(rounds); err != nil {
				t.Fatal(err)
			}
			sameMemory(t, memoryOfDir(t, final), want)
		})
	}
}

// writeRawPagemap writes a pagemap image with entries as given (no pages
// file), for counts no real pages file could back.
func writeRawPagemap(t *testing.T, path string, pagesID uint32, wide bool, es ...entry) {
	t.Helper()
	b, err := encodePagemap(&pagemapImage{pagesID: pagesID, entries: es, wide: wide})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestHostileTruncatedPages(t *testing.T) {
	for _, f := range flatteners {
		for _, tc := range []struct{ dir, pages string }{
			{"d2", pagesName(4)}, // d2's own pages
			{"d1", pagesName(1)}, // the parent's: copied, or taken over
		} {
			t.Run(f.name+"/"+tc.dir, func(t *testing.T) {
				h := newHostileChain(t)
				p := filepath.Join(h.chain, tc.dir, tc.pages)
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(p, fi.Size()-1); err != nil {
					t.Fatal(err)
				}
				refused(t, h, f.flatten, f.name == "FlattenConsuming", p)
			})
		}
	}
}

// TestHostileOversizedPageCounts gives pagemap entries counts the pages
// files cannot hold, some whose byte sizes or end addresses overflow 64
// bits: refused before anything is allocated or copied.
func TestHostileOversizedPageCounts(t *testing.T) {
	ps := pageSize
	huge := []struct {
		name string
		dir  string // whose pagemap-1 is replaced
		es   []entry
	}{
		{"present, pages file too short", "d2", []entry{{0x100 * ps, 1 << 40, pe}}},
		{"present, bytes overflow to 0", "d2", []entry{{0x100 * ps, 1 << 52, pe}}},
		{"present, bytes overflow int64", "d2", []entry{{0x100 * ps, 1 << 51, pe}}},
		{"present, largest count", "d2", []entry{{0x100 * ps, math.MaxUint64, pe}}},
		{"parent, end wraps", "d2", []entry{{math.MaxUint64 - ps + 1, 2, par}}},
		{"parent, huge count", "d2", []entry{{0x100 * ps, 1 << 51, par}}},
		{"second entry overflows offset", "d2", []entry{{0x100 * ps, 1, pe}, {0x101 * ps, 1<<51 - 1, pe}}},
		{"ancestor bytes overflow to 0", "d1", []entry{{0x100 * ps, 1 << 52, pe}}},
		{"ancestor end wraps", "d1", []entry{{math.MaxUint64 - ps + 1, 2, pe}}},
		{"ancestor largest count", "d1", []entry{{0x100 * ps, math.MaxUint64, pel}}},
	}
	for _, f := range flatteners {
		for _, tc := range huge {
			t.Run(f.name+"/"+tc.name, func(t *testing.T) {
				h := newHostileChain(t)
				pm := filepath.Join(h.chain, tc.dir, "pagemap-1.img")
				id := uint32(4)
				if tc.dir == "d1" {
					id = 1
				}
				writeRawPagemap(t, pm, id, true, tc.es...)
				refused(t, h, f.flatten, f.name == "FlattenConsuming", pm)
			})
		}
	}
}

// TestHostileErrorsAreNotMissingPages checks that refusals are not
// mistaken for a broken but honest chain.
func TestHostileErrorsAreNotMissingPages(t *testing.T) {
	h := newHostileChain(t)
	replaceWithSymlink(t, filepath.Join(h.d1, pagesName(1)), h.secret)
	_, err := Flatten(h.d2)
	if err == nil || errors.Is(err, ErrMissingParentPages) {
		t.Errorf("error %v", err)
	}
}

// TestHostileNotRegularPages makes a pages file a FIFO (whose open would
// block until a writer came) and a directory: refused, at once.
func TestHostileNotRegularPages(t *testing.T) {
	for _, f := range flatteners {
		for _, kind := range []string{"fifo", "dir"} {
			t.Run(f.name+"/"+kind, func(t *testing.T) {
				h := newHostileChain(t)
				p := filepath.Join(h.d1, pagesName(1))
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				var err error
				if kind == "fifo" {
					err = unix.Mkfifo(p, 0o600)
				} else {
					err = os.Mkdir(p, 0o700)
				}
				if err != nil {
					t.Fatal(err)
				}
				refused(t, h, f.flatten, f.name == "FlattenConsuming", p)
			})
		}
	}
}

// TestFlattenConsumingSharedParentPages gives two of the parent's
// pagemaps one pages file (CRIU never does): taking it over for one would
// change what the other reads, so both are copied.
func TestFlattenConsumingSharedParentPages(t *testing.T) {
	h := newHostileChain(t)
	// d1's pagemap-2 (4 pages at 0x200) reads the start of pages-1.img.
	writeRawPagemap(t, filepath.Join(h.d1, "pagemap-2.img"), 1, false, entry{0x200 * pageSize, 4, pe})
	if err := os.Remove(filepath.Join(h.d1, pagesName(2))); err != nil {
		t.Fatal(err)
	}
	want := memoryOfDir(t, h.d2)
	res, err := FlattenConsuming(h.d2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if !strings.Contains(res.TakeoverRefused, "read by pagemaps") || res.TakeoverLinkFailed {
		t.Errorf("takeover refused for %q, want the shared pages file", res.TakeoverRefused)
	}
	checkFlat(t, h.d2)
	if err := os.RemoveAll(h.d1); err != nil {
		t.Fatal(err)
	}
	sameMemory(t, memoryOfDir(t, h.d2), want)
}

// TestHostileLinkedKeptPages links the pages file of a pagemap flatten
// keeps as it is (a task new in d2): the flat image would vouch for it,
// and containerd would tar the other file's bytes into the checkpoint.
func TestHostileLinkedKeptPages(t *testing.T) {
	for _, f := range flatteners {
		for _, kind := range []string{"symlink", "hard link"} {
			t.Run(f.name+"/"+kind, func(t *testing.T) {
				h := newHostileChain(t)
				writeFakePagemap(t, h.d2, "d2", fakePagemap{name: "pagemap-3.img", pagesID: 9, entries: []fakeEntry{{0x300, 2, pe}}})
				p := filepath.Join(h.d2, pagesName(9))
				if kind == "symlink" {
					replaceWithSymlink(t, p, h.secret)
				} else {
					replaceWithHardLink(t, p, h.secret)
				}
				refused(t, h, f.flatten, f.name == "FlattenConsuming", p)
			})
		}
	}
}

// TestCheckFlat checks a flattened dir, then breaks it one way at a time:
// what a restore must not be handed is refused, naming the file.
func TestCheckFlat(t *testing.T) {
	flat := func(t *testing.T) *hostileChain {
		h := newHostileChain(t)
		if _, err := Flatten(h.d2); err != nil {
			t.Fatal(err)
		}
		if err := CheckFlat(h.d2); err != nil {
			t.Fatalf("flattened dir: %v", err)
		}
		return h
	}
	pagesOf := func(t *testing.T, h *hostileChain, name string) string {
		img, err := readPagemapFile(filepath.Join(h.d2, name))
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Join(h.d2, pagesName(img.pagesID))
	}
	for _, tc := range []struct {
		name    string
		breakIt func(t *testing.T, h *hostileChain) string // returns the file to name
		is      error
	}{
		{"symlinked core image", func(t *testing.T, h *hostileChain) string {
			p := filepath.Join(h.d2, "inventory.img")
			replaceWithSymlink(t, p, h.secret)
			return p
		}, ErrUnsafeImage},
		{"hard-linked pages", func(t *testing.T, h *hostileChain) string {
			p := pagesOf(t, h, "pagemap-1.img")
			replaceWithHardLink(t, p, h.secret)
			return p
		}, ErrUnsafeImage},
		{"hard-linked other file", func(t *testing.T, h *hostileChain) string {
			p := filepath.Join(h.d2, "core-1.img")
			if err := os.Link(h.secret, p); err != nil {
				t.Fatal(err)
			}
			return p
		}, ErrUnsafeImage},
		{"FIFO", func(t *testing.T, h *hostileChain) string {
			p := filepath.Join(h.d2, "fs-1.img")
			if err := unix.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, ErrUnsafeImage},
		{"parent link", func(t *testing.T, h *hostileChain) string {
			p := filepath.Join(h.d2, parentLinkName)
			if err := os.Symlink("../d1", p); err != nil {
				t.Fatal(err)
			}
			return p
		}, ErrUnsafeImage},
		{"PE_PARENT entries", func(t *testing.T, h *hostileChain) string {
			p := filepath.Join(h.d2, "pagemap-9.img")
			writeRawPagemap(t, p, 99, false, entry{0x900 * pageSize, 1, par})
			return p
		}, ErrMissingParentPages},
		{"truncated pages", func(t *testing.T, h *hostileChain) string {
			p := pagesOf(t, h, "pagemap-1.img")
			if err := os.Truncate(p, int64(pageSize)); err != nil {
				t.Fatal(err)
			}
			return p
		}, ErrCorruptImage},
		{"oversized count", func(t *testing.T, h *hostileChain) string {
			p := filepath.Join(h.d2, "pagemap-9.img")
			writeRawPagemap(t, p, 99, true, entry{0x900 * pageSize, 1 << 52, pe})
			return p
		}, ErrCorruptImage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := flat(t)
			file := tc.breakIt(t, h)
			outside := treeState(t, h.outside)
			d2 := treeState(t, h.d2)
			err := CheckFlat(h.d2)
			t.Log(err)
			switch {
			case !errors.Is(err, tc.is):
				t.Errorf("error %v, want %v", err, tc.is)
			case !strings.Contains(err.Error(), file):
				t.Errorf("error %q does not name %s", err, file)
			}
			sameTree(t, treeState(t, h.outside), outside)
			sameTree(t, treeState(t, h.d2), d2)
		})
	}
}
