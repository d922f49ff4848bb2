package imagechain

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests here flatten with FlattenConsuming where pages were added or
// removed below most of the parent's, on a filesystem that shifts ranges
// (the test's temp dir, on ext4 or XFS; skipped elsewhere), and check the
// result byte for byte against Flatten's copy (flattenBothOn).

// twoLevels returns a chain builder: d1 with parent's entries, d2 with
// own on top of it.
func twoLevels(parent, own []fakeEntry) func(t *testing.T, root string) {
	return func(t *testing.T, root string) {
		writeFakeDir(t, filepath.Join(root, "d1"), "d1", "",
			fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: parent})
		writeFakeDir(t, filepath.Join(root, "d2"), "d2", "../d1",
			fakePagemap{name: "pagemap-1.img", pagesID: 2, entries: own})
	}
}

// wantResult fails unless res is want (Duration and refusals aside).
func wantResult(t *testing.T, res, want Result) {
	t.Helper()
	res.Duration, res.refusals = 0, 0
	if res != want {
		t.Errorf("result %+v, want %+v", res, want)
	}
}

func TestFlattenConsumingShiftPageAddedLow(t *testing.T) {
	// A page of heap appeared below a region the parent holds: inserted,
	// the region kept where the parent's file has it.
	res := flattenBothOn(t, shiftDir, twoLevels(
		[]fakeEntry{{0x100, 2, pe}, {0x200, 64, pe}},
		[]fakeEntry{{0x100, 2, par}, {0x150, 1, pe}, {0x200, 64, par}}), "d2")
	wantResult(t, res, Result{Flattened: true, Depth: 1, Pagemaps: 1, PagesKept: 1, PagesTakenOver: 66,
		RangeShifts: 1, BytesWritten: int64(pageSize)})
}

func TestFlattenConsumingShiftPagesRemovedLow(t *testing.T) {
	// The parent's first two pages are gone (the Go scavenger released
	// them): collapsed out.
	res := flattenBothOn(t, shiftDir, twoLevels(
		[]fakeEntry{{0x100, 2, pe}, {0x200, 64, pe}},
		[]fakeEntry{{0x200, 64, par}}), "d2")
	wantResult(t, res, Result{Flattened: true, Depth: 1, Pagemaps: 1, PagesTakenOver: 64, RangeShifts: 1})
}

func TestFlattenConsumingShiftAddedAndRemoved(t *testing.T) {
	// One page gone at 0x101, one new at 0x180 (insert), two new at
	// 0x2fe (insert after collapsing 0x101's), the parent's last two gone
	// (cut off by the truncation), and dir's own pages over kept runs.
	res := flattenBothOn(t, shiftDir, twoLevels(
		[]fakeEntry{{0x100, 2, pe}, {0x200, 32, pe}, {0x300, 32, pe}},
		[]fakeEntry{
			{0x100, 1, par}, {0x180, 1, pe},
			{0x200, 3, par}, {0x203, 2, pe}, {0x205, 27, par},
			{0x2fe, 2, pe}, {0x300, 29, par}, {0x31d, 1, pe},
		}), "d2")
	// Own: 1 + 2 + 2 + 1 pages; the parent's: 1 + 30 + 29.
	wantResult(t, res, Result{Flattened: true, Depth: 1, Pagemaps: 1, PagesKept: 6, PagesTakenOver: 60,
		RangeShifts: 3, BytesWritten: int64(6 * pageSize)})
}

func TestFlattenConsumingShiftSeveral(t *testing.T) {
	// Sixteen regions of the parent's, a page added below every even one
	// and the first page of every odd one gone.
	var parent, own []fakeEntry
	taken := uint64(0)
	for i := range uint64(16) {
		base := 0x1000 + i*0x100
		parent = append(parent, fakeEntry{base, 16, pe})
		if i%2 == 0 {
			own = append(own, fakeEntry{base - 1, 1, pe}, fakeEntry{base, 16, par})
			taken += 16
		} else {
			own = append(own, fakeEntry{base + 1, 15, par})
			taken += 15
		}
	}
	res := flattenBothOn(t, shiftDir, twoLevels(parent, own), "d2")
	// The first added page is below every page of the parent: one insert
	// for each even region, one collapse for each odd one.
	wantResult(t, res, Result{Flattened: true, Depth: 1, Pagemaps: 1, PagesKept: 8, PagesTakenOver: taken,
		RangeShifts: 16, BytesWritten: int64(8 * pageSize)})
}

func TestFlattenConsumingShiftDeeperAncestor(t *testing.T) {
	// d3's parent d2 holds its low pages in d1 (not flat there): they are
	// filled from d1, copied; the rest of d2's file is kept, with a page
	// inserted between.
	build := func(t *testing.T, root string) {
		writeFakeDir(t, filepath.Join(root, "d1"), "d1", "",
			fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, 4, pe}, {0x200, 64, pe}}})
		writeFakeDir(t, filepath.Join(root, "d2"), "d2", "../d1",
			fakePagemap{name: "pagemap-1.img", pagesID: 2, entries: []fakeEntry{{0x100, 4, par}, {0x180, 1, pe}, {0x200, 64, pe}}})
		writeFakeDir(t, filepath.Join(root, "d3"), "d3", "../d2",
			fakePagemap{name: "pagemap-1.img", pagesID: 3, entries: []fakeEntry{
				{0x100, 4, par}, {0x180, 1, par}, {0x190, 1, pe}, {0x200, 64, par},
			}})
	}
	res := flattenBothOn(t, shiftDir, build, "d3")
	wantResult(t, res, Result{Flattened: true, Depth: 2, Pagemaps: 1, PagesKept: 1, PagesTakenOver: 65,
		PagesCopied: 4, BytesCopied: int64(4 * pageSize), RangeShifts: 2, BytesWritten: int64(5 * pageSize)})
}

func TestFlattenConsumingShiftManyPagemaps(t *testing.T) {
	// writeSameLayoutChain with pagemap-1 shifted: a page below it all.
	// pagemap-2 grows at its end (the prefix, no shift).
	build := func(t *testing.T, root string) {
		writeSameLayoutChain(t, root, true)
		d2 := filepath.Join(root, "d2")
		os.Remove(filepath.Join(d2, "pagemap-1.img"))
		os.Remove(filepath.Join(d2, pagesName(4)))
		writeFakePagemap(t, d2, "d2", fakePagemap{name: "pagemap-1.img", pagesID: 4, entries: []fakeEntry{
			{0xff, 1, pe}, {0x100, 8, par}, {0x110, 4, par}, {0x120, 16, par},
		}})
	}
	res := flattenBothOn(t, shiftDir, build, "d2")
	wantResult(t, res, Result{Flattened: true, Depth: 1, Pagemaps: 3, PagesKept: 1 + 1 + 2, PagesTakenOver: 28 + 4 + 6,
		RangeShifts: 1, BytesWritten: int64(4 * pageSize)})
}

func TestFlattenConsumingShiftPrefersPrefix(t *testing.T) {
	// On a filesystem that shifts, what the exact prefix does cheaper is
	// still done that way: same layout, pages added at the end.
	for _, grow := range []bool{false, true} {
		res := flattenBothOn(t, shiftDir, func(t *testing.T, root string) { writeSameLayoutChain(t, root, grow) }, "d2")
		if res.RangeShifts != 0 || res.PagesTakenOver != 31 || res.PagesCopied != 0 {
			t.Errorf("grow %v: %+v, want the prefix taken over without shifts", grow, res)
		}
	}
}

func TestFlattenConsumingShiftBeatsLongTail(t *testing.T) {
	// A page below the parent's last two: the prefix would rewrite three
	// pages after the cut, the shift inserts one and writes it.
	res := flattenBothOn(t, shiftDir, twoLevels(
		[]fakeEntry{{0x100, 8, pe}, {0x200, 2, pe}},
		[]fakeEntry{{0x100, 1, pe}, {0x101, 7, par}, {0x1ff, 1, pe}, {0x200, 2, par}}), "d2")
	wantResult(t, res, Result{Flattened: true, Depth: 1, Pagemaps: 1, PagesKept: 2, PagesTakenOver: 9,
		RangeShifts: 1, BytesWritten: int64(2 * pageSize)})
}

func TestFlattenConsumingShiftRefusedCopies(t *testing.T) {
	// On tmpfs, made to try: the kernel refuses the first insert
	// (EOPNOTSUPP), nothing changed, and the pagemap is copied, saying
	// why; no file of the takeover is left.
	build := twoLevels(
		[]fakeEntry{{0x100, 2, pe}, {0x200, 64, pe}},
		[]fakeEntry{{0x100, 2, par}, {0x150, 1, pe}, {0x200, 64, par}})
	res := flattenBothOn(t, tmpfsDir, build, "d2", shiftAnyFS())
	if res.PagesTakenOver != 0 || res.PagesCopied != 66 || res.RangeShifts != 0 || res.TakeoverLinkFailed {
		t.Errorf("result %+v, want a copy", res)
	}
	const prefix = "pagemap-1.img: page layout differs from the parent's at flat offset 8192 (vaddr 0x150000, not in the parent's pagemap) of 274432 bytes: the tail to rewrite (266240 bytes) is longer than the prefix kept; shifting ranges instead: the filesystem cannot shift ranges: fallocate insert range at 8192 (4096 bytes) of "
	if !strings.HasPrefix(res.TakeoverRefused, prefix) || !strings.HasSuffix(res.TakeoverRefused, ": operation not supported") {
		t.Errorf("refused for %q, want %q...: operation not supported", res.TakeoverRefused, prefix)
	}
}

func TestFlattenConsumingShiftRefusedKeepsParent(t *testing.T) {
	// The same, FlattenConsuming alone: the parent's pages file is as it
	// was, and dir has no leftover.
	root := tmpfsDir(t)
	twoLevels(
		[]fakeEntry{{0x100, 2, pe}, {0x200, 64, pe}},
		[]fakeEntry{{0x100, 2, par}, {0x150, 1, pe}, {0x200, 64, par}})(t, root)
	d1 := filepath.Join(root, "d1")
	before := snapshot(t, d1)
	res, err := FlattenConsuming(filepath.Join(root, "d2"), shiftAnyFS())
	if err != nil || res.PagesCopied != 66 {
		t.Fatalf("%+v, %v; want a copy", res, err)
	}
	sameSnapshot(t, snapshot(t, d1), before)
	names, err := dirNames(filepath.Join(root, "d2"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, tempPrefix) {
			t.Errorf("leftover %s", n)
		}
	}
}

func TestFlattenConsumingShiftRefusedTakesPrefix(t *testing.T) {
	// Where the exact prefix is possible too (a long tail), a refused
	// shift falls back to it.
	res := flattenBothOn(t, tmpfsDir, twoLevels(
		[]fakeEntry{{0x100, 8, pe}, {0x200, 2, pe}},
		[]fakeEntry{{0x100, 1, pe}, {0x101, 7, par}, {0x1ff, 1, pe}, {0x200, 2, par}}), "d2", shiftAnyFS())
	wantResult(t, res, Result{Flattened: true, Depth: 1, Pagemaps: 1, PagesKept: 2, PagesTakenOver: 7, PagesCopied: 2,
		BytesCopied: int64(2 * pageSize), BytesWritten: int64((1 + 3) * pageSize)})
}

func TestFlattenConsumingShiftTooManyRuns(t *testing.T) {
	// A page added between every two of the parent's: more runs than a
	// shift takes on, so a copy.
	var parent, own []fakeEntry
	for i := range uint64(maxShiftSegments/2 + 1) {
		parent = append(parent, fakeEntry{0x1000 + 2*i, 1, pe})
		own = append(own, fakeEntry{0x1000 + 2*i - 1, 1, pe}, fakeEntry{0x1000 + 2*i, 1, par})
	}
	root := shiftDir(t)
	twoLevels(parent, own)(t, root)
	res, err := FlattenConsuming(filepath.Join(root, "d2"))
	if err != nil {
		t.Fatal(err)
	}
	if res.PagesTakenOver != 0 || res.RangeShifts != 0 || !strings.Contains(res.TakeoverRefused, "shifting ranges instead: the flat file is 4098 runs of kept and other pages, more than 4096") {
		t.Errorf("%+v, want a copy for too many runs", res)
	}
}

func TestFlattenConsumingShiftNotWorthIt(t *testing.T) {
	// Most of the flat file is dir's own pages: a shift would write more
	// than it keeps.
	res := flattenBothOn(t, shiftDir, twoLevels(
		[]fakeEntry{{0x100, 4, pe}},
		[]fakeEntry{{0xf0, 8, pe}, {0x100, 4, par}}), "d2")
	if res.PagesTakenOver != 0 || res.RangeShifts != 0 || !strings.HasSuffix(res.TakeoverRefused, "shifting ranges instead: it would write 32768 bytes and keep 16384 of the parent's") {
		t.Errorf("%+v, want a copy, the shift not worth it", res)
	}
}

// shiftAnyFS makes FlattenConsuming try range shifts on tmpfs too.
func shiftAnyFS() Option { return func(o *options) { o.shiftAnyFS = true } }

// TestFlattenConsumingShiftErrorConsumesParent fails the takeover after
// its first range operation (a file size limit the flat file exceeds):
// dir is unchanged, and the error is ErrParentConsumed, since the parent's
// pages were moved. The limit is set in a child process (this test
// again), since it would stop the test binary's own log too.
func TestFlattenConsumingShiftErrorConsumesParent(t *testing.T) {
	if dir := os.Getenv(fsizeLimitEnv); dir != "" {
		flattenUnderFileSizeLimit(t, dir)
		return
	}
	root := shiftDir(t)
	// The parent's first page is gone (a collapse), four pages appear
	// at the end: the flat file is three pages longer than the parent's,
	// and grows past the limit once shifted.
	twoLevels(
		[]fakeEntry{{0x100, 1, pe}, {0x200, 8, pe}, {0x300, 8, pe}},
		[]fakeEntry{{0x200, 8, par}, {0x300, 8, par}, {0x380, 4, pe}})(t, root)
	d2 := filepath.Join(root, "d2")
	before := snapshot(t, d2)
	cmd := exec.Command(os.Args[0], "-test.run=^TestFlattenConsumingShiftErrorConsumesParent$", "-test.v")
	cmd.Env = append(os.Environ(), fsizeLimitEnv+"="+d2)
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatal(err)
	}
	const want = "flattened=false efbig=true consumed=true shifted=true"
	if !strings.Contains(string(out), want) {
		t.Errorf("want %q: an error after a range shift, ErrParentConsumed", want)
	}
	sameSnapshot(t, snapshot(t, d2), before)
}

const fsizeLimitEnv = "PRECOPY_IMAGECHAIN_TEST_FSIZE_DIR"

// flattenUnderFileSizeLimit runs FlattenConsuming on dir with files
// limited to 17 pages, and prints what it did.
func flattenUnderFileSizeLimit(t *testing.T, dir string) {
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	// SIGXFSZ is ignored by the Go runtime: writes fail with EFBIG.
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: 17 * pageSize, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	res, err := FlattenConsuming(dir)
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("%v\nflattened=%v efbig=%v consumed=%v shifted=%v\n", err,
		res.Flattened, errors.Is(err, unix.EFBIG), errors.Is(err, ErrParentConsumed), res.RangeShifts > 0)
}
