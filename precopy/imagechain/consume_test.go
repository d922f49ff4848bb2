package imagechain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// writeSameLayoutChain builds a flat d1 and a d2 listing exactly d1's pages
// (precopy's final dump): pagemap-1 and the shmem one keep d1's layout,
// with d2's own pages scattered over it; pagemap-2 (when grow) gains a page.
func writeSameLayoutChain(t *testing.T, root string, grow bool) {
	t.Helper()
	writeFakeDir(t, filepath.Join(root, "d1"), "d1", "",
		fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{
			{0x100, 8, pel}, {0x110, 4, pe}, {0x120, 16, pel},
		}},
		fakePagemap{name: "pagemap-2.img", pagesID: 2, entries: []fakeEntry{{0x200, 4, pe}}},
		fakePagemap{name: "pagemap-shmem-77.img", pagesID: 3, entries: []fakeEntry{{0, 8, pe}}},
	)
	pm2 := []fakeEntry{{0x200, 4, par}}
	if grow {
		pm2 = append(pm2, fakeEntry{0x204, 1, pe})
	}
	writeFakeDir(t, filepath.Join(root, "d2"), "d2", "../d1",
		fakePagemap{name: "pagemap-1.img", pagesID: 4, wide: true, entries: []fakeEntry{
			{0x100, 2, par}, {0x102, 1, pel}, {0x103, 5, par},
			{0x110, 4, par},
			{0x120, 3, pel}, {0x123, 10, par}, {0x12d, 3, pel},
		}},
		fakePagemap{name: "pagemap-2.img", pagesID: 5, entries: pm2},
		fakePagemap{name: "pagemap-shmem-77.img", pagesID: 6, legacy: true, entries: []fakeEntry{
			{0, 1, pe}, {1, 6, par}, {7, 1, pe},
		}},
	)
}

// flattenBoth is flattenBothOn on tmpfs, where the takeover keeps the
// parent's layout (an exact prefix) or copies: the tests that call it say
// what that does.
func flattenBoth(t *testing.T, build func(t *testing.T, root string), dir string) Result {
	t.Helper()
	return flattenBothOn(t, tmpfsDir, build, dir)
}

// flattenBothOn flattens dir (under two copies of a chain made by build,
// each in a dir from mkroot) with Flatten and FlattenConsuming (with
// opts), checks both against the chain's memory and each other (every
// file of dir byte for byte, pagemap flags), and returns FlattenConsuming's
// result. Where pages were taken over, the new pages file is the parent's
// (same inode).
func flattenBothOn(t *testing.T, mkroot func(t *testing.T) string, build func(t *testing.T, root string), dir string, opts ...Option) Result {
	t.Helper()
	rootA, rootB := mkroot(t), mkroot(t)
	build(t, rootA)
	build(t, rootB)
	want := memoryOfDir(t, filepath.Join(rootA, dir))
	parentInodes := parentPagesInodes(t, filepath.Join(rootB, dir))
	if _, err := Flatten(filepath.Join(rootA, dir)); err != nil {
		t.Fatal(err)
	}
	res, err := FlattenConsuming(filepath.Join(rootB, dir), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	sameSnapshot(t, snapshot(t, filepath.Join(rootB, dir)), snapshot(t, filepath.Join(rootA, dir)))
	if res.PagesTakenOver > 0 {
		taken := 0
		for name, ino := range pagesInodes(t, filepath.Join(rootB, dir)) {
			if ino == parentInodes[name] {
				taken++
			}
		}
		if taken == 0 {
			t.Errorf("%d pages taken over, but no pages file is its parent's", res.PagesTakenOver)
		}
	}
	for _, root := range []string{rootA, rootB} {
		d := filepath.Join(root, dir)
		checkFlat(t, d)
		// Nothing behind dir is needed any more.
		for _, name := range []string{"d1", "d2"} {
			if name != dir {
				if err := os.RemoveAll(filepath.Join(root, name)); err != nil {
					t.Fatal(err)
				}
			}
		}
		sameMemory(t, memoryOfDir(t, d), want)
	}
	for _, name := range pagemapNames(t, filepath.Join(rootA, dir)) {
		a := flagsOf(t, filepath.Join(rootA, dir, name))
		b := flagsOf(t, filepath.Join(rootB, dir, name))
		if !slices.Equal(a, b) {
			t.Errorf("%s: flags %#x, Flatten gives %#x", name, b, a)
		}
	}
	return res
}

// pagesInodes returns the inode of each pagemap's pages file in dir, by
// pagemap.
func pagesInodes(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	inodes := make(map[string]uint64)
	for _, name := range pagemapNames(t, dir) {
		img, err := readPagemapFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, pagesName(img.pagesID)), &st); err == nil {
			inodes[name] = st.Ino
		}
	}
	return inodes
}

// parentPagesInodes is pagesInodes of dir's parent.
func parentPagesInodes(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	return pagesInodes(t, filepath.Join(dir, parentLinkName))
}

// tmpfsDir returns a new dir on tmpfs (under /dev/shm), removed after the
// test: a takeover there keeps the parent's layout or copies.
func tmpfsDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "imagechain-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Skipf("/dev/shm is not a tmpfs (%v)", err)
	}
	return dir
}

// shiftDir returns the test's temp dir if its filesystem shifts ranges
// (ext4, XFS), and skips the test otherwise.
func shiftDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC {
		t.Skipf("%s is on tmpfs: no fallocate FALLOC_FL_INSERT_RANGE (set TMPDIR to a dir on ext4 or XFS)", dir)
	}
	f, err := os.Create(filepath.Join(dir, "probe"))
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(make([]byte, 2*pageSize)); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_INSERT_RANGE, 0, int64(pageSize)); err != nil {
		t.Skipf("%s: fallocate FALLOC_FL_INSERT_RANGE: %v (set TMPDIR to a dir on ext4 or XFS)", dir, err)
	}
	return dir
}

func TestFlattenConsumingSameLayout(t *testing.T) {
	res := flattenBoth(t, func(t *testing.T, root string) { writeSameLayoutChain(t, root, false) }, "d2")
	// Own pages: pagemap-1 1+3+3, shmem 2. From the parent: pagemap-1
	// 2+5+4+10, pagemap-2 4, shmem 6.
	want := Result{Flattened: true, Depth: 1, Pagemaps: 3, PagesKept: 9, PagesTakenOver: 31, BytesWritten: int64(9 * pageSize)}
	res.Duration = 0
	if res != want {
		t.Errorf("result %+v, want %+v", res, want)
	}
}

func TestFlattenConsumingGrownAtTheEnd(t *testing.T) {
	// pagemap-2 gained a page after the parent's: taken over, the new page
	// written as its tail.
	res := flattenBoth(t, func(t *testing.T, root string) { writeSameLayoutChain(t, root, true) }, "d2")
	want := Result{Flattened: true, Depth: 1, Pagemaps: 3, PagesKept: 10, PagesTakenOver: 31}
	want.BytesWritten = int64((9 + 1) * pageSize) // own pages only
	res.Duration = 0
	if res != want {
		t.Errorf("result %+v, want %+v", res, want)
	}
}

func TestFlattenConsumingTailReadsOverwrittenPages(t *testing.T) {
	// A page appeared below the parent's last two (a stack growing down):
	// the flat file keeps the first 8 pages in place and its tail, the new
	// page then the parent's last two, overwrites where those two were.
	build := func(t *testing.T, root string) {
		writeFakeDir(t, filepath.Join(root, "d1"), "d1", "",
			fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, 8, pe}, {0x200, 2, pe}}})
		writeFakeDir(t, filepath.Join(root, "d2"), "d2", "../d1",
			fakePagemap{name: "pagemap-1.img", pagesID: 2, entries: []fakeEntry{
				{0x100, 1, pe}, {0x101, 7, par}, {0x1ff, 1, pe}, {0x200, 2, par},
			}})
	}
	res := flattenBoth(t, build, "d2")
	want := Result{Flattened: true, Depth: 1, Pagemaps: 1, PagesKept: 2, PagesTakenOver: 7, PagesCopied: 2,
		BytesCopied: int64(2 * pageSize), BytesWritten: int64((1 + 3) * pageSize)}
	res.Duration = 0
	if res != want {
		t.Errorf("result %+v, want %+v", res, want)
	}
}

func TestFlattenConsumingLayoutDiffersEarly(t *testing.T) {
	// A page appeared before most of the parent's: the tail would be
	// larger than the prefix, so it is a copy.
	build := func(t *testing.T, root string) {
		writeFakeDir(t, filepath.Join(root, "d1"), "d1", "",
			fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, 2, pe}, {0x200, 8, pe}}})
		writeFakeDir(t, filepath.Join(root, "d2"), "d2", "../d1",
			fakePagemap{name: "pagemap-1.img", pagesID: 2, entries: []fakeEntry{
				{0x100, 2, par}, {0x150, 1, pe}, {0x200, 8, par},
			}})
	}
	res := flattenBoth(t, build, "d2")
	if res.PagesTakenOver != 0 || res.PagesCopied != 10 {
		t.Errorf("result %+v, want a copy", res)
	}
	// 2 pages kept in place, then 9 to rewrite.
	const why = "pagemap-1.img: page layout differs from the parent's at flat offset 8192 (vaddr 0x150000, not in the parent's pagemap) of 45056 bytes: the tail to rewrite (36864 bytes) is longer than the prefix kept"
	if res.TakeoverRefused != why || res.TakeoverLinkFailed {
		t.Errorf("refused for %q (link failed %v), want %q", res.TakeoverRefused, res.TakeoverLinkFailed, why)
	}
}

func TestFlattenConsumingPagesRemovedEarly(t *testing.T) {
	// The parent's first two pages are gone (unmapped, or zero): every
	// later page sits two pages lower in the flat file than in the
	// parent's, so nothing can be kept in place.
	build := func(t *testing.T, root string) {
		writeFakeDir(t, filepath.Join(root, "d1"), "d1", "",
			fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, 2, pe}, {0x200, 8, pe}}})
		writeFakeDir(t, filepath.Join(root, "d2"), "d2", "../d1",
			fakePagemap{name: "pagemap-1.img", pagesID: 2, entries: []fakeEntry{{0x200, 1, pe}, {0x201, 7, par}}})
	}
	res := flattenBoth(t, build, "d2")
	if res.PagesTakenOver != 0 || res.PagesCopied != 7 {
		t.Errorf("result %+v, want a copy", res)
	}
	const why = "pagemap-1.img: page layout differs from the parent's at flat offset 0 (vaddr 0x200000, at 8192 in the parent's pages file: 2 pages fewer below it than in the parent, the first the parent's page at 0x100000) of 32768 bytes: the tail to rewrite (32768 bytes) is longer than the prefix kept"
	if res.TakeoverRefused != why {
		t.Errorf("refused for %q, want %q", res.TakeoverRefused, why)
	}
}

func TestFlattenConsumingRefusalsOfManyPagemaps(t *testing.T) {
	// Five processes, each with a page added below the parent's: each is
	// copied; the first three say why, the others are counted.
	build := func(t *testing.T, root string) {
		var d1, d2 []fakePagemap
		for i := uint32(1); i <= 5; i++ {
			name := fmt.Sprintf("pagemap-%d.img", i)
			d1 = append(d1, fakePagemap{name: name, pagesID: i, entries: []fakeEntry{{0x100, 4, pe}}})
			d2 = append(d2, fakePagemap{name: name, pagesID: 10 + i, entries: []fakeEntry{{0xff, 1, pe}, {0x100, 4, par}}})
		}
		writeFakeDir(t, filepath.Join(root, "d1"), "d1", "", d1...)
		writeFakeDir(t, filepath.Join(root, "d2"), "d2", "../d1", d2...)
	}
	res := flattenBoth(t, build, "d2")
	if res.PagesTakenOver != 0 || res.PagesCopied != 20 {
		t.Errorf("result %+v, want copies", res)
	}
	reasons := strings.Split(res.TakeoverRefused, "; ")
	if len(reasons) != 4 || reasons[3] != "and other pagemaps" {
		t.Fatalf("refused for %q, want three reasons and a count", res.TakeoverRefused)
	}
	for i, r := range reasons[:3] {
		want := fmt.Sprintf("pagemap-%d.img: page layout differs from the parent's at flat offset 0 (vaddr 0xff000, not in the parent's pagemap) of 20480 bytes", i+1)
		if !strings.HasPrefix(r, want) {
			t.Errorf("reason %d %q, want it to start with %q", i, r, want)
		}
	}
}

func TestFlattenConsumingRemovedPages(t *testing.T) {
	// d2 lists fewer pages than d1 (some became zero or were unmapped): the
	// parent's pages file is taken over and cut short.
	build := func(t *testing.T, root string) {
		writeFakeDir(t, filepath.Join(root, "d1"), "d1", "",
			fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, 8, pe}, {0x110, 4, pe}}})
		writeFakeDir(t, filepath.Join(root, "d2"), "d2", "../d1",
			fakePagemap{name: "pagemap-1.img", pagesID: 2, entries: []fakeEntry{{0x100, 2, pe}, {0x102, 6, par}}})
	}
	res := flattenBoth(t, build, "d2")
	if res.PagesTakenOver != 6 || res.PagesCopied != 0 {
		t.Errorf("result %+v, want a takeover", res)
	}
}

func TestFlattenConsumingParentNotFlat(t *testing.T) {
	// d3's parent d2 has PE_PARENT entries everywhere d3 refers to it.
	res := flattenBoth(t, writeFakeChain, "d3")
	if res.PagesTakenOver != 0 || res.PagesCopied != 41 || res.Depth != 2 {
		t.Errorf("result %+v, want a copy", res)
	}
	if !strings.Contains(res.TakeoverRefused, "which the parent holds in its own parent: not flat") {
		t.Errorf("refused for %q, want the parent not flat", res.TakeoverRefused)
	}
}

func TestFlattenConsumingNoParent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	writeFakeDir(t, dir, "d", "", fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x10, 4, pel}}})
	before := snapshot(t, dir)
	res, err := FlattenConsuming(dir)
	if err != nil || res.Flattened {
		t.Errorf("%+v, %v", res, err)
	}
	sameSnapshot(t, snapshot(t, dir), before)
}

// TestFlattenConsumingChecksBeforeWriting fails on pagemap-2, whose
// parent pages are missing: found while planning, before pagemap-1's pages
// are written into the parent's pages file, so neither dir changes.
func TestFlattenConsumingChecksBeforeWriting(t *testing.T) {
	root := t.TempDir()
	writeSameLayoutChain(t, root, false)
	d2 := filepath.Join(root, "d2")
	// pagemap-2 wants 0x200-0x203 from d1, which now has only two.
	os.Remove(filepath.Join(root, "d1", "pagemap-2.img"))
	writeFakePagemap(t, filepath.Join(root, "d1"), "d1",
		fakePagemap{name: "pagemap-2.img", pagesID: 2, entries: []fakeEntry{{0x200, 2, pe}}})
	d1Before, d2Before := treeState(t, filepath.Join(root, "d1")), treeState(t, d2)
	res, err := FlattenConsuming(d2)
	t.Log(err)
	if !errors.Is(err, ErrMissingParentPages) || res.Flattened {
		t.Fatalf("FlattenConsuming: %+v, %v", res, err)
	}
	sameTree(t, treeState(t, d2), d2Before)
	sameTree(t, treeState(t, filepath.Join(root, "d1")), d1Before)
}

// TestFlattenConsumingWriteErrorKeepsChain runs out of space (a small
// tmpfs) while copying pagemap-2, after pagemap-1 took the parent's pages
// file over: dir must be unchanged and, without a tail, still restore the
// same memory through its consumed parent; with a tail written, the error
// is ErrParentConsumed.
func TestFlattenConsumingWriteErrorKeepsChain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts a tmpfs: needs root")
	}
	for _, tc := range []struct {
		name string
		tail bool
	}{{"no tail", false}, {"tail", true}} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=4m,mode=0700"); err != nil {
				t.Skipf("mount tmpfs: %v", err)
			}
			t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
			d1, d2 := filepath.Join(root, "d1"), filepath.Join(root, "d2")
			// pagemap-1 lists d1's pages (0x100-0x107, 0x200-0x201), one
			// of them its own: taken over, patched in place.
			pm1 := []fakeEntry{{0x100, 2, par}, {0x102, 1, pe}, {0x103, 5, par}, {0x200, 2, par}}
			if tc.tail {
				// A page below the parent's last two: they move one on.
				pm1 = []fakeEntry{{0x100, 1, pe}, {0x101, 7, par}, {0x1ff, 1, pe}, {0x200, 2, par}}
			}
			writeFakeDir(t, d1, "d1", "",
				fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, 8, pe}, {0x200, 2, pe}}},
				fakePagemap{name: "pagemap-2.img", pagesID: 2, entries: []fakeEntry{{0x1000, 64, pe}}})
			// pagemap-2 gained a page below the parent's: copied, 65 pages.
			writeFakeDir(t, d2, "d2", "../d1",
				fakePagemap{name: "pagemap-1.img", pagesID: 3, entries: pm1},
				fakePagemap{name: "pagemap-2.img", pagesID: 4, entries: []fakeEntry{{0xfff, 1, pe}, {0x1000, 64, par}}})
			want := memoryOfDir(t, d2)
			before := snapshot(t, d2)
			d1Pages := snapshot(t, d1)[pagesName(1)]
			// Leave room for pagemap-1's new pagemap and tail, not for
			// pagemap-2's 65 pages.
			var fsst unix.Statfs_t
			if err := unix.Statfs(root, &fsst); err != nil {
				t.Fatal(err)
			}
			free := int64(fsst.Bavail) * fsst.Bsize
			if err := os.WriteFile(filepath.Join(root, "filler"), make([]byte, free-16*int64(pageSize)), 0o600); err != nil {
				t.Fatal(err)
			}

			res, err := FlattenConsuming(d2)
			t.Log(err)
			if err == nil || res.Flattened || !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("FlattenConsuming: %+v, %v; want ENOSPC before the commit", res, err)
			}
			if errors.Is(err, ErrParentConsumed) != tc.tail {
				t.Errorf("ErrParentConsumed %v, want %v", errors.Is(err, ErrParentConsumed), tc.tail)
			}
			sameSnapshot(t, snapshot(t, d2), before)
			// The test is about a parent already patched.
			if snapshot(t, d1)[pagesName(1)] == d1Pages {
				t.Error("d1's pages-1.img was not patched before the failure")
			}
			if !tc.tail {
				sameMemory(t, memoryOfDir(t, d2), want)
			}
		})
	}
}

// A parent on another filesystem cannot be hard linked: the pagemap is
// copied, and the result says why.
func TestFlattenConsumingAcrossFilesystemsCopies(t *testing.T) {
	shm, err := os.MkdirTemp("/dev/shm", "imagechain-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	root := t.TempDir()
	var a, b unix.Stat_t
	if unix.Stat(shm, &a) != nil || unix.Stat(root, &b) != nil || a.Dev == b.Dev {
		t.Skip("/dev/shm and the test's temp dir are on one filesystem")
	}
	d1 := filepath.Join(shm, "d1")
	writeFakeDir(t, d1, "d1", "",
		fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, 8, pe}}})
	d2 := filepath.Join(root, "d2")
	up, err := filepath.Rel(d2, d1)
	if err != nil {
		t.Fatal(err)
	}
	writeFakeDir(t, d2, "d2", up,
		fakePagemap{name: "pagemap-1.img", pagesID: 2, entries: []fakeEntry{{0x100, 1, pe}, {0x101, 7, par}}})
	want := memoryOfDir(t, d2)
	res, err := FlattenConsuming(d2)
	if err != nil {
		t.Fatal(err)
	}
	if res.PagesTakenOver != 0 || res.PagesCopied != 7 || !res.TakeoverLinkFailed ||
		!strings.HasPrefix(res.TakeoverRefused, "pagemap-1.img: hard link ") || !strings.Contains(res.TakeoverRefused, "cross-device link") {
		t.Errorf("result %+v, want a copy with the failed link as the reason", res)
	}
	t.Log(res.TakeoverRefused)
	checkFlat(t, d2)
	if err := os.RemoveAll(d1); err != nil {
		t.Fatal(err)
	}
	sameMemory(t, memoryOfDir(t, d2), want)
}

// TestPlanTakeoverWithoutParentPagemap: a pagemap the parent does not
// have is not taken over, and the plan says why. FlattenConsuming never
// gets there (a pagemap with PE_PARENT entries and no parent pagemap
// fails to resolve first), so planTakeover is asked directly.
func TestPlanTakeoverWithoutParentPagemap(t *testing.T) {
	root := t.TempDir()
	writeFakeDir(t, filepath.Join(root, "d1"), "d1", "",
		fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, 4, pe}}})
	d1, err := openImageDir(filepath.Join(root, "d1"))
	if err != nil {
		t.Fatal(err)
	}
	c := newChain([]*imageDir{d1}, pageSize)
	defer c.close()
	img := &pagemapImage{pagesID: 2, entries: []entry{{0x100 * pageSize, 4, par}}}
	tk, why, err := planTakeover("pagemap-2.img", img, nil, c, &copyPlan{}, false)
	if tk != nil || err != nil || why != "the parent has no pagemap-2.img (a process it did not dump)" {
		t.Errorf("planTakeover: %v, %q, %v; want no takeover, the reason", tk, why, err)
	}
	tk, why, err = planTakeover("pagemap-1.img", img, nil, newChain(nil, pageSize), &copyPlan{}, false)
	if tk != nil || err != nil || why != "no parent image" {
		t.Errorf("planTakeover without a chain: %v, %q, %v; want no takeover, the reason", tk, why, err)
	}
}
