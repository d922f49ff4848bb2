package precopy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/precopy/precopy/precopy/imagechain"
	"github.com/precopy/precopy/precopy/policy"
)

// incrementalEngine is a fake engine with incremental checkpoints on, two
// rounds a checkpoint; its rounds skip pages of their parent, as CRIU's
// do when the parent holds them.
func incrementalEngine(t *testing.T) (*Engine, *fakeCRIU) {
	t.Helper()
	// Two rounds a checkpoint: the first of each skips pages.
	rounds := slices.Concat(synthetic(2), synthetic(2), synthetic(2))
	for i := 0; i < len(rounds); i += 2 {
		rounds[i].PagesSkippedParent = 900
	}
	f := &fakeCRIU{rounds: rounds, finals: synthetic(1)}
	e := newFakeEngine(t, f, fixed(2))
	e.Incremental = true
	return e, f
}

// checkpointInto runs a checkpoint (Pause's pre-copy, then Checkpoint)
// into a new image dir under the test's temp dir.
func checkpointInto(t *testing.T, e *Engine, f *fakeCRIU, name string) (*Report, string) {
	t.Helper()
	cp := nextImage(t, f, name)
	report, err := e.Checkpoint(t.Context(), e.PreCopy(t.Context(), TriggerPause, nil, false), cp)
	if err != nil {
		t.Fatal(err)
	}
	return report, cp.ImageDir
}

// nextImage makes f's checkpoint go into a new image dir, name, under the
// test's temp dir, and returns it.
func nextImage(t *testing.T, f *fakeCRIU, name string) Checkpoint {
	t.Helper()
	cp := f.checkpoint
	cp.ImageDir = filepath.Join(filepath.Dir(f.checkpoint.ImageDir), name)
	if err := os.Mkdir(cp.ImageDir, 0o700); err != nil {
		t.Fatal(err)
	}
	f.checkpoint = cp
	return cp
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// firstRoundParents are the parents the first round of each pre-copy
// (every second pre-dump, with fixed(2)) dumped against.
func firstRoundParents(f *fakeCRIU) []string {
	var out []string
	for i := 0; i < len(f.predumps); i += 2 {
		out = append(out, f.predumps[i].Parent)
	}
	return out
}

// TestIncrementalStartsFromTheLastCheckpoint: a checkpoint keeps its
// image's memory files (links, no copy) in the engine's dir, the next
// pre-copy's first round dumps against them (they are there while it
// runs), and the report says what the parent was and what it saved.
func TestIncrementalStartsFromTheLastCheckpoint(t *testing.T) {
	e, f := incrementalEngine(t)
	first, image1 := checkpointInto(t, e, f, "image1")
	inc := first.Incremental
	if inc == nil || inc.Number != 1 || inc.Parent != nil || inc.NoParent == "" || !inc.Kept || inc.KeptBytes == 0 {
		t.Fatalf("first checkpoint's incremental %+v: want number 1, no parent and why, kept", inc)
	}
	kept := filepath.Join(e.Dir, keptDirName)
	for _, name := range []string{"inventory.img", "pagemap-1.img", "pages-1.img"} {
		if inode(t, filepath.Join(kept, name)) != inode(t, filepath.Join(image1, name)) {
			t.Errorf("kept %s is not a link to the image's", name)
		}
	}
	if _, err := os.Stat(filepath.Join(kept, ReportFile)); !os.IsNotExist(err) {
		t.Errorf("kept the report too: %v", err)
	}
	// The daemon stores the image and removes its dir.
	if err := os.RemoveAll(image1); err != nil {
		t.Fatal(err)
	}

	var parentHeld []string
	f.parentSeen = func(dir string) {
		if _, err := os.Stat(filepath.Join(dir, "inventory.img")); err == nil && filepath.Base(dir) == "round-0" {
			parentHeld = append(parentHeld, dir)
		}
	}
	second, _ := checkpointInto(t, e, f, "image2")
	if got := firstRoundParents(f); !slices.Equal(got, []string{"", "../round-0"}) || len(parentHeld) != 1 {
		t.Errorf("first rounds dumped on %q (kept image there: %v), want the second on ../round-0", got, parentHeld)
	}
	inc = second.Incremental
	want := Parent{Number: 1, DumpedAt: first.Final.Start, Bytes: first.Incremental.KeptBytes}
	if inc == nil || inc.Number != 2 || inc.Parent == nil || *inc.Parent != want || inc.NoParent != "" {
		t.Fatalf("second checkpoint's incremental %+v, want parent %+v", inc, want)
	}
	if inc.PagesFromParent != 900 || inc.BytesSaved != 900*policy.PageSize || !inc.Kept {
		t.Errorf("second checkpoint saved %d pages (%d bytes), kept %v; want round 1's 900 pages skipped in the parent, kept", inc.PagesFromParent, inc.BytesSaved, inc.Kept)
	}
	entries, _ := os.ReadDir(e.Dir)
	if len(entries) != 1 || entries[0].Name() != keptDirName {
		t.Errorf("engine dir holds %v, want only the kept image", entries)
	}
	e.Release()
	if _, err := os.Stat(e.Dir); !os.IsNotExist(err) {
		t.Errorf("engine dir after Release: %v", err)
	}
}

// TestIncrementalNeverWritesACheckpointsFiles: an image dir that outlives
// its checkpoint (a caller's --image-path) shares its files with the kept
// image; the next pre-copy's flatten writes into its parent's pages file,
// so those files are copied first and the checkpoint stays as it was.
func TestIncrementalNeverWritesACheckpointsFiles(t *testing.T) {
	e, f := incrementalEngine(t)
	_, image1 := checkpointInto(t, e, f, "image1")
	before, err := os.ReadFile(filepath.Join(image1, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	// A consuming flatten: the parent's pages file gets the round's pages.
	e.Flatten = func(dir, within string) (imagechain.Result, error) {
		target, err := os.Readlink(filepath.Join(dir, "parent"))
		if err != nil {
			return imagechain.Result{}, err
		}
		pf, err := os.OpenFile(filepath.Join(dir, target, "pages-1.img"), os.O_WRONLY, 0)
		if err != nil {
			return imagechain.Result{}, err
		}
		pf.WriteAt([]byte("round's pages"), 0)
		pf.Close()
		return imagechain.Result{Flattened: true}, os.Remove(filepath.Join(dir, "parent"))
	}
	second, _ := checkpointInto(t, e, f, "image2")
	if second.Incremental.Parent == nil {
		t.Fatalf("no parent: %s", second.Incremental.NoParent)
	}
	after, err := os.ReadFile(filepath.Join(image1, "pages-1.img"))
	if err != nil || !bytes.Equal(before, after) {
		t.Errorf("the first checkpoint's pages changed (%v): its files were consumed in place", err)
	}
}

// TestIncrementalNoParent: what leaves the next pre-copy without a parent,
// and says so in its report: an image over the budget, a one-shot
// checkpoint (which also drops the kept image), rounds discarded without
// a checkpoint (they had taken the kept image over), an exit-mode or a
// failed checkpoint.
func TestIncrementalNoParent(t *testing.T) {
	for name, tc := range map[string]struct {
		between func(t *testing.T, e *Engine, f *fakeCRIU)
		noKeep  func(e *Engine)
		why     string
	}{
		"over budget": {
			noKeep: func(e *Engine) { e.KeepBudget = 1 },
			why:    "checkpoint 1 was not kept: its memory (0 MiB) is over the budget",
		},
		"one-shot between": {
			between: func(t *testing.T, e *Engine, f *fakeCRIU) {
				cp := f.checkpoint
				cp.ImageDir = filepath.Join(filepath.Dir(cp.ImageDir), "one-shot")
				os.Mkdir(cp.ImageDir, 0o700)
				f.checkpoint = cp
				r, err := e.Checkpoint(t.Context(), e.Skip(TriggerCheckpoint, "the task is paused"), cp)
				if err != nil {
					t.Fatal(err)
				}
				if r.Incremental.Kept || !strings.Contains(r.Incremental.NotKept, "one-shot") {
					t.Errorf("one-shot checkpoint's incremental %+v", r.Incremental)
				}
				if _, err := os.Stat(filepath.Join(e.Dir, keptDirName)); !os.IsNotExist(err) {
					t.Errorf("kept image after a one-shot checkpoint: %v", err)
				}
			},
			why: "checkpoint 2 was one-shot",
		},
		"rounds discarded": {
			between: func(t *testing.T, e *Engine, f *fakeCRIU) {
				if err := e.PreCopy(t.Context(), TriggerPause, nil, false).Discard(); err != nil {
					t.Fatal(err)
				}
			},
			why: "the rounds that took checkpoint 1's image over were discarded",
		},
		"exit mode": {
			between: func(t *testing.T, e *Engine, f *fakeCRIU) {
				e.dropKept("test") // exit mode keeps nothing: start without one
				cp := f.checkpoint
				cp.ImageDir = filepath.Join(filepath.Dir(cp.ImageDir), "exit")
				os.Mkdir(cp.ImageDir, 0o700)
				cp.Exit = true
				f.checkpoint = cp
				r, err := e.Checkpoint(t.Context(), e.PreCopy(t.Context(), TriggerPause, nil, false), cp)
				if err != nil {
					t.Fatal(err)
				}
				if r.Incremental.Kept || r.Incremental.NotKept != "the checkpoint stopped the task" {
					t.Errorf("exit-mode checkpoint's incremental %+v", r.Incremental)
				}
			},
			why: "test",
		},
		"failed checkpoint": {
			between: func(t *testing.T, e *Engine, f *fakeCRIU) {
				f.failAll = true
				defer func() { f.failAll = false }()
				if _, err := e.Checkpoint(t.Context(), e.Skip(TriggerCheckpoint, "test"), f.checkpoint); err == nil {
					t.Fatal("no error")
				}
			},
			why: "checkpoint 2 failed",
		},
	} {
		t.Run(name, func(t *testing.T) {
			e, f := incrementalEngine(t)
			if tc.noKeep != nil {
				tc.noKeep(e)
			}
			checkpointInto(t, e, f, "image1")
			if tc.between != nil {
				tc.between(t, e, f)
			}
			f.predumps = nil
			last, _ := checkpointInto(t, e, f, "last")
			inc := last.Incremental
			if inc.Parent != nil || !strings.HasPrefix(inc.NoParent, tc.why) {
				t.Errorf("incremental %+v, want no parent because %q", inc, tc.why)
			}
			if f.predumps[0].Parent != "" {
				t.Errorf("first round dumped on %q, want no parent", f.predumps[0].Parent)
			}
		})
	}
}

// TestIncrementalOff keeps nothing and reports nothing of it.
func TestIncrementalOff(t *testing.T) {
	e, f := incrementalEngine(t)
	e.Incremental = false
	r1, _ := checkpointInto(t, e, f, "image1")
	r2, _ := checkpointInto(t, e, f, "image2")
	if r1.Incremental != nil || r2.Incremental != nil || slices.ContainsFunc(f.predumps, func(d Dirs) bool { return strings.Contains(d.Parent, "round-0") }) {
		t.Errorf("incremental reported (%+v, %+v) or used with the setting off", r1.Incremental, r2.Incremental)
	}
	if _, err := os.Stat(e.Dir); !os.IsNotExist(err) {
		t.Errorf("engine dir left: %v", err)
	}
}

// TestWriteBackKeptPages: the kept image's writeback is asked for without
// an error on a disk filesystem (the test's temp dir) and on tmpfs, where
// it does nothing, and the files are closed after it.
func TestWriteBackKeptPages(t *testing.T) {
	dirs := []string{t.TempDir()}
	if shm, err := os.MkdirTemp("/dev/shm", "precopy-writeback-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(shm) })
		dirs = append(dirs, shm)
	}
	for _, dir := range dirs {
		p := filepath.Join(dir, "pages-1.img")
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		writeBack([]*os.File{f}, testLogger{t: t, failOnWarn: true})
		if err := f.Close(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s: after writeBack, Close = %v, want it closed already", dir, err)
		}
	}
}

// TestIncrementalDefersTheKeptImagesFlatten: a leave-running checkpoint of
// a task checkpointed before, with the flattens deferred, dumps round 1 on
// the kept image and round 2 on round 1, flattens nothing before the final
// dump, and after it round 1 (consuming the kept image), round 2 and the
// final dump, in that order.
func TestIncrementalDefersTheKeptImagesFlatten(t *testing.T) {
	e, f := incrementalEngine(t)
	checkpointInto(t, e, f, "image1")
	var flattens []string
	flatten := e.Flatten
	e.Flatten = func(dir, within string) (imagechain.Result, error) {
		flattens = append(flattens, filepath.Base(dir))
		return flatten(dir, within)
	}
	r := e.PreCopy(t.Context(), TriggerPause, nil, true)
	parents := []string{f.predumps[2].Parent, f.predumps[3].Parent}
	if !slices.Equal(parents, []string{"../round-0", "../round-1"}) || len(flattens) != 0 || !slices.Equal(r.pending, []int{1, 2}) {
		t.Fatalf("rounds dumped on %q, flattens %q, pending %v: want a chain down to the kept image, nothing flattened", parents, flattens, r.pending)
	}
	report := checkpointThawing(t, e, f, r, "image2")
	if want := []string{"round-1", "round-2", "image2"}; !slices.Equal(flattens, want) {
		t.Errorf("flattens %q, want %q", flattens, want)
	}
	if inc := report.Incremental; inc == nil || inc.Parent == nil || inc.Parent.Number != 1 || !inc.Kept {
		t.Errorf("incremental %+v: want checkpoint 1 as parent, this one kept", inc)
	}
	for _, rd := range report.Rounds {
		if !rd.FlattenAfterDump {
			t.Errorf("round %d: %+v; want its flatten after the dump", rd.Index, rd)
		}
	}
}
