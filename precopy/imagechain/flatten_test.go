package imagechain

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	pe  = PEPresent
	pel = PEPresent | PELazy
	par = PEParent
)

// writeFakeChain builds three image dirs under root the way three rounds of
// pre-dump/dump would: d1 full, d2 and d3 with PE_PARENT holes whose ranges
// span several ancestor entries and levels. It covers task and shmem
// pagemaps, a task only in d3, a pre-flags (in_parent) image in d2 and a
// CRIU 4.2+ (64-bit nr_pages) image in d3.
func writeFakeChain(t *testing.T, root string) {
	t.Helper()
	writeFakeDir(t, filepath.Join(root, "d1"), "d1", "",
		fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{
			{0x100, 8, pel}, {0x110, 4, pe}, {0x120, 16, pel},
		}},
		fakePagemap{name: "pagemap-2.img", pagesID: 2, entries: []fakeEntry{{0x200, 4, pe}}},
		fakePagemap{name: "pagemap-shmem-77.img", pagesID: 3, entries: []fakeEntry{{0, 8, pe}}},
	)
	writeFakeDir(t, filepath.Join(root, "d2"), "d2", "../d1",
		fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{
			{0x100, 2, par}, {0x102, 2, pel}, {0x104, 4, par},
			{0x110, 4, pe},
			{0x120, 10, par}, {0x12a, 6, pel},
			{0x140, 2, pe},
		}},
		fakePagemap{name: "pagemap-2.img", pagesID: 2, legacy: true, entries: []fakeEntry{
			{0x200, 4, par}, {0x204, 1, pe},
		}},
		fakePagemap{name: "pagemap-shmem-77.img", pagesID: 3, entries: []fakeEntry{{0, 4, par}, {4, 4, pe}}},
	)
	writeFakeDir(t, filepath.Join(root, "d3"), "d3", "../d2",
		fakePagemap{name: "pagemap-1.img", pagesID: 5, wide: true, entries: []fakeEntry{
			{0x100, 8, par},
			{0x110, 2, pel}, {0x112, 2, par},
			{0x120, 16, par},
			{0x140, 2, par},
			{0x150, 1, pel},
		}},
		fakePagemap{name: "pagemap-2.img", pagesID: 6, entries: []fakeEntry{{0x200, 5, par}}},
		fakePagemap{name: "pagemap-3.img", pagesID: 7, entries: []fakeEntry{{0x300, 3, pe}}},
		fakePagemap{name: "pagemap-shmem-77.img", pagesID: 8, entries: []fakeEntry{{0, 8, par}}},
	)
}

// checkFlat fails unless dir is a clean, self-contained image set.
func checkFlat(t *testing.T, dir string) {
	t.Helper()
	names, err := dirNames(dir)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, name := range names {
		switch {
		case name == parentLinkName:
			t.Errorf("%s: parent link left", dir)
		case strings.HasPrefix(name, tempPrefix):
			t.Errorf("%s: temporary file %s left", dir, name)
		case isPagemapName(name):
			img, err := readPagemap(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if img.hasParentEntries() {
				t.Errorf("%s: PE_PARENT entries left", name)
			}
			used[pagesName(img.pagesID)] = true
		}
	}
	for _, name := range names {
		if _, ok := pagesID(name); ok && !used[name] {
			t.Errorf("%s: %s is used by no pagemap", dir, name)
		}
	}
}

func TestFlattenRecursive(t *testing.T) {
	root := t.TempDir()
	writeFakeChain(t, root)
	d3 := filepath.Join(root, "d3")
	want := memoryOfDir(t, d3)
	d1Before, d2Before := snapshot(t, filepath.Join(root, "d1")), snapshot(t, filepath.Join(root, "d2"))

	res, err := Flatten(d3)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	checkFlat(t, d3)
	sameSnapshot(t, snapshot(t, filepath.Join(root, "d1")), d1Before)
	sameSnapshot(t, snapshot(t, filepath.Join(root, "d2")), d2Before)
	if err := os.RemoveAll(filepath.Join(root, "d1")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(root, "d2")); err != nil {
		t.Fatal(err)
	}
	sameMemory(t, memoryOfDir(t, d3), want)

	wantRes := Result{Flattened: true, Depth: 2, Pagemaps: 3, PagesKept: 6, PagesCopied: 41}
	wantRes.BytesCopied = int64(41 * pageSize)
	wantRes.BytesWritten = int64((41 + 3) * pageSize) // pagemap-3 is not rewritten
	res.Duration = 0
	if res != wantRes {
		t.Errorf("result %+v, want %+v", res, wantRes)
	}
	// Pages keep the flags of the entry that held them; neighbours with
	// equal flags merge: 0x100 is d1 P|L (2), d2 P|L (2), d1 P|L (4); then
	// 0x110 d3 P|L, 0x112 d2 P, 0x120 d1 P|L (10) + d2 P|L (6), 0x140 d2 P,
	// 0x150 d3 P|L.
	got := flagsOf(t, filepath.Join(d3, "pagemap-1.img"))
	want1 := []uint32{pel, pel, pe, pel, pe, pel}
	if !slices.Equal(got, want1) {
		t.Errorf("pagemap-1 flags %#x, want %#x", got, want1)
	}
	if img, err := readPagemap(filepath.Join(d3, "pagemap-1.img")); err != nil || !img.wide {
		t.Errorf("pagemap-1 no longer in the 64-bit nr_pages format (err %v)", err)
	}

	// Cheap to call again: nothing to do.
	res, err = Flatten(d3)
	if err != nil || res.Flattened || res.PagesKept != 47 {
		t.Errorf("second Flatten: %+v, %v", res, err)
	}
}

// TestFlattenOneLevelEach is precopy's sequence: each round is flattened
// once written, so every Flatten resolves one level.
func TestFlattenOneLevelEach(t *testing.T) {
	root := t.TempDir()
	writeFakeChain(t, root)
	want := memoryOfDir(t, filepath.Join(root, "d3"))
	for _, d := range []string{"d2", "d3"} {
		res, err := Flatten(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		if res.Depth != 1 || !res.Flattened {
			t.Errorf("%s: %+v", d, res)
		}
		checkFlat(t, filepath.Join(root, d))
	}
	if err := os.RemoveAll(filepath.Join(root, "d1")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(root, "d2")); err != nil {
		t.Fatal(err)
	}
	sameMemory(t, memoryOfDir(t, filepath.Join(root, "d3")), want)
}

func TestFlattenNoParent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	writeFakeDir(t, dir, "d", "", fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x10, 4, pel}}})
	before := snapshot(t, dir)
	res, err := Flatten(dir)
	if err != nil {
		t.Fatal(err)
	}
	if res.Flattened || res.Depth != 0 || res.PagesKept != 4 || res.PagesCopied != 0 {
		t.Errorf("result %+v", res)
	}
	sameSnapshot(t, snapshot(t, dir), before)
}

func TestFlattenNoParentLinkButParentEntries(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	writeFakeDir(t, dir, "d", "", fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x10, 4, par}}})
	before := snapshot(t, dir)
	_, err := Flatten(dir)
	if !errors.Is(err, ErrMissingParentPages) {
		t.Errorf("error %v, want ErrMissingParentPages", err)
	}
	sameSnapshot(t, snapshot(t, dir), before)
}

// TestFlattenErrorsLeaveDirUnchanged breaks a good chain in one place each
// and checks that Flatten fails and leaves d3 as it was. The breakage is in
// the last pagemap, so earlier ones have been written when it fails.
func TestFlattenErrorsLeaveDirUnchanged(t *testing.T) {
	for _, tc := range []struct {
		name       string
		breakChain func(t *testing.T, root string)
		is         error
	}{
		{"parent range missing", func(t *testing.T, root string) {
			// d3's shmem wants pages 0-7 from d2, d2 has 0-3 from d1: drop d1's.
			os.Remove(filepath.Join(root, "d1", "pagemap-shmem-77.img"))
			writeFakePagemap(t, filepath.Join(root, "d1"), "d1",
				fakePagemap{name: "pagemap-shmem-77.img", pagesID: 3, entries: []fakeEntry{{0, 2, pe}}})
		}, ErrMissingParentPages},
		{"parent pagemap missing", func(t *testing.T, root string) {
			os.Remove(filepath.Join(root, "d2", "pagemap-shmem-77.img"))
		}, ErrMissingParentPages},
		{"lazy pages not in images", func(t *testing.T, root string) {
			os.Remove(filepath.Join(root, "d2", "pagemap-shmem-77.img"))
			writeFakePagemap(t, filepath.Join(root, "d2"), "d2",
				fakePagemap{name: "pagemap-shmem-77.img", pagesID: 9, entries: []fakeEntry{{0, 8, PELazy}}})
		}, ErrLazyPages},
		{"ancestor pages truncated", func(t *testing.T, root string) {
			os.Truncate(filepath.Join(root, "d1", pagesName(3)), int64(pageSize))
		}, nil},
		{"dangling grandparent link", func(t *testing.T, root string) {
			os.RemoveAll(filepath.Join(root, "d1"))
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeFakeChain(t, root)
			tc.breakChain(t, root)
			d3 := filepath.Join(root, "d3")
			before := snapshot(t, d3)
			_, err := Flatten(d3)
			t.Log(err)
			switch {
			case err == nil:
				t.Fatal("Flatten succeeded")
			case tc.is != nil && !errors.Is(err, tc.is):
				t.Errorf("error %v, want %v", err, tc.is)
			}
			sameSnapshot(t, snapshot(t, d3), before)
		})
	}
}

func TestFlattenParentLoop(t *testing.T) {
	root := t.TempDir()
	writeFakeDir(t, filepath.Join(root, "a"), "a", "../b",
		fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x10, 4, par}}})
	writeFakeDir(t, filepath.Join(root, "b"), "b", "../a",
		fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x10, 4, par}}})
	if _, err := Flatten(filepath.Join(root, "a")); err == nil || !strings.Contains(err.Error(), "loop") {
		t.Errorf("error %v, want a loop", err)
	}
}

func TestFlattenRemovesLeftovers(t *testing.T) {
	root := t.TempDir()
	writeFakeChain(t, root)
	d3 := filepath.Join(root, "d3")
	if err := os.WriteFile(filepath.Join(d3, tempPrefix+"pages-9.img.123"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Flatten(d3); err != nil {
		t.Fatal(err)
	}
	checkFlat(t, d3)
}

// TestCommitUndo makes the second of two pagemap swaps fail and checks
// that the first is undone and the new pages files are gone.
func TestCommitUndo(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"pagemap-1.img", "pages-1.img"} {
		os.WriteFile(filepath.Join(dir, name), []byte("old "+name), 0o600)
	}
	before := snapshot(t, dir)
	r := &replacement{dir: dir}
	write := func(final, content string, pages bool) {
		f, err := r.create(final, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(content)
		f.Close()
		if pages {
			r.addPages(f.Name(), final)
		} else {
			r.addPagemap(f.Name(), final)
		}
	}
	write("pages-2.img", "new pages", true)
	write("pagemap-1.img", "new pagemap", false)
	write("pagemap-2.img", "no original to replace", false) // link fails
	r.obsolete = []string{filepath.Join(dir, "pages-1.img")}
	if err := r.commit(); err == nil {
		t.Fatal("commit succeeded")
	}
	sameSnapshot(t, snapshot(t, dir), before)
}
