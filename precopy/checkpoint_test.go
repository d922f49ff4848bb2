package precopy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/precopy/precopy/precopy/imagechain"
	"github.com/precopy/precopy/precopy/policy"
)

// checkReport checks what every successful checkpoint's report holds: the
// final dump's start, wall time and image size (never zero: a dump takes
// time and writes something), and that it is the one written into the
// image.
func checkReport(t *testing.T, e *Engine, cp Checkpoint, got *Report) {
	t.Helper()
	f := got.Final
	if f == nil || f.Start.IsZero() || f.Wall == 0 || f.ImageBytes == 0 {
		t.Fatalf("final %+v: start, wall and image size must be filled", f)
	}
	if f.ImageBytes != dirBytes(cp.ImageDir)-fileSize(t, filepath.Join(cp.ImageDir, ReportFile)) {
		t.Errorf("final image_bytes %d, the image (without the report) holds %d", f.ImageBytes, dirBytes(cp.ImageDir))
	}
	written, err := ReadReport(cp.ImageDir)
	if err != nil || !written.Final.Start.Equal(f.Start) || written.Final.ImageBytes != f.ImageBytes {
		t.Errorf("report in the image %+v, %v; returned %+v", written, err, got)
	}
	if _, err := os.Lstat(filepath.Join(cp.ImageDir, "parent")); !os.IsNotExist(err) {
		t.Errorf("the image has a parent link: %v", err)
	}
	// Nothing but the image kept for the next checkpoint (Incremental).
	if entries, err := os.ReadDir(e.Dir); !os.IsNotExist(err) && (len(entries) != 1 || entries[0].Name() != keptDirName || !e.Incremental) {
		t.Errorf("rounds left after the checkpoint: %v %v", entries, err)
	}
}

func fileSize(t *testing.T, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestCheckpointRecorded replays a recorded pre-copy of 256 MiB with low
// dirtying (the policy's testdata) through the engine: the rounds stop
// where the policy says, the final dump goes on the last round, and the
// report holds the final dump's statistics and the rounds'.
func TestCheckpointRecorded(t *testing.T) {
	rounds, final, _ := recorded(t, "low-dirty-256m")
	f := &fakeCRIU{rounds: rounds, finals: []policy.Round{final}}
	e := newFakeEngine(t, f, tcgConfig())
	r := e.PreCopy(t.Context(), TriggerPause, nil, false)
	if n := len(r.Report.Rounds); !r.PreCopied() || n < 2 || n > 3 ||
		!slices.Contains([]policy.Reason{policy.ReasonTargetMet, policy.ReasonConverged}, r.Report.Stop.Reason) {
		t.Fatalf("pre-copied %v, %d rounds, stop %+v; want 2-3 rounds, target met or converged", r.PreCopied(), n, r.Report.Stop)
	}
	start := f.clock.now
	report, err := e.Checkpoint(t.Context(), r, f.checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	last, _ := filepath.Rel(f.checkpoint.ImageDir, f.predumps[len(f.predumps)-1].Image)
	if want := []string{last}; !strings.HasPrefix(last, "../bundle/precopy/rounds-") || !slices.Equal(f.parents, want) {
		t.Errorf("final dumps on %q, want one on %q", f.parents, last)
	}
	checkReport(t, e, f.checkpoint, report)
	got := report.Final
	if !got.Start.Equal(start) || got.PagesWritten != final.PagesWritten || got.Wall != final.Wall || report.FellBack != "" {
		t.Errorf("final %+v, want the recorded final dump started at %v", got, start)
	}
	// memwrite_time lies inside memdump_time in a dump (CRIU's
	// __parasite_dump_pages_seized writes the pages before it stops the
	// memdump timer): subtracting both would count the write twice.
	if want := final.Freeze() - final.MemDump; e.finalFixed != want {
		t.Errorf("measured fixed cost %v, want %v", e.finalFixed, want)
	}
}

// TestCheckpointCannotConvergeIsOneShot: a load that rewrites everything
// gets its rounds dropped after they show it; the checkpoint is one-shot,
// its report keeps the rounds and why.
func TestCheckpointCannotConvergeIsOneShot(t *testing.T) {
	rounds, _, oneShot := recorded(t, "write-all-256m")
	f := &fakeCRIU{rounds: rounds, finals: []policy.Round{oneShot}}
	e := newFakeEngine(t, f, tcgConfig())
	r := e.PreCopy(t.Context(), TriggerCheckpoint, nil, false)
	if r.PreCopied() || r.Report.PreCopied || !strings.Contains(r.Report.Skipped, "cannot-converge after 2 rounds") || len(r.Report.Rounds) != 2 {
		t.Fatalf("report %+v, want one-shot after 2 rounds for cannot-converge", r.Report)
	}
	if _, err := os.Stat(e.Dir); !os.IsNotExist(err) {
		t.Errorf("dropped rounds left: %v", err)
	}
	report, err := e.Checkpoint(t.Context(), r, f.checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, e, f.checkpoint, report)
	if !slices.Equal(f.parents, []string{""}) || report.Final.PagesWritten != oneShot.PagesWritten || report.Trigger != TriggerCheckpoint {
		t.Errorf("final dumps on %q, report %+v; want one one-shot dump", f.parents, report)
	}
}

// twoFinals are the statistics of a final dump on rounds and of the
// one-shot dump that redoes it, told apart by their pages.
func twoFinals() []policy.Round {
	finals := synthetic(2)
	finals[0].PagesWritten, finals[1].PagesWritten = 10, 60000
	return finals
}

// TestCheckpointFallsBackOneShot: a final dump on the rounds whose CRIU
// died, or whose flatten failed, is redone one-shot while the container
// is still frozen, and the report describes the dump the image holds.
func TestCheckpointFallsBackOneShot(t *testing.T) {
	for name, tc := range map[string]struct {
		failFinal bool
		flatten   string
		fellBack  string
	}{
		"final dump fails": {failFinal: true, fellBack: "final dump on pre-copied rounds"},
		"flatten fails":    {flatten: "image", fellBack: "flatten final image"},
	} {
		t.Run(name, func(t *testing.T) {
			f := &fakeCRIU{rounds: synthetic(2), finals: twoFinals(), failFinal: tc.failFinal}
			e := newFakeEngine(t, f, fixed(2))
			e.Flatten = flattenParent(tc.flatten)
			r := e.PreCopy(t.Context(), TriggerPause, nil, false)
			report, err := e.Checkpoint(t.Context(), r, f.checkpoint)
			if err != nil {
				t.Fatal(err)
			}
			checkReport(t, e, f.checkpoint, report)
			if len(f.parents) != 2 || f.parents[1] != "" || !strings.Contains(report.FellBack, tc.fellBack) {
				t.Errorf("dumps on %q, fell back %q; want a one-shot dump after %q", f.parents, report.FellBack, tc.fellBack)
			}
			if want := f.finals[len(f.parents)-1].PagesWritten; report.Final.PagesWritten != want || !report.PreCopied {
				t.Errorf("final wrote %d pages, want %d: the one-shot dump's", report.Final.PagesWritten, want)
			}
			if f.recoveries == 0 {
				t.Error("no check for a cgroup the failed dump left frozen before the one-shot dump")
			}
		})
	}
}

// TestCheckpointNotRedone: a failure after the dump is not redone in exit
// mode (the container is gone) nor after an early thaw (a dump now would
// not match the rw layer the client diffs); the checkpoint fails, and a
// container a dead CRIU left frozen is thawed.
func TestCheckpointNotRedone(t *testing.T) {
	for name, tc := range map[string]struct {
		exit, thaw bool
		failFinal  bool
		// ran: the dead CRIU thawed the container the client had paused.
		ran  bool
		want string
	}{
		"exit mode, final dump fails": {exit: true, failFinal: true, want: "stops the container: not redone"},
		"exit mode, flatten fails":    {exit: true, want: "stops the container: not redone"},
		"thawed early, flatten fails": {thaw: true, want: "thawed after the dump: not redone"},
		"CRIU died having thawed it":  {failFinal: true, ran: true, want: "ran on: not redone"},
	} {
		t.Run(name, func(t *testing.T) {
			f := &fakeCRIU{rounds: synthetic(1), finals: twoFinals(), failFinal: tc.failFinal, ranWhilePaused: tc.ran}
			e := newFakeEngine(t, f, fixed(1))
			e.Flatten = flattenParent("image")
			cp := f.checkpoint
			cp.Exit = tc.exit
			var afterDumps int
			cp.AfterDump = func(context.Context) bool { afterDumps++; return tc.thaw }
			_, err := e.Checkpoint(t.Context(), e.PreCopy(t.Context(), TriggerPause, nil, false), cp)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if len(f.parents) != 1 || f.recoveries == 0 || afterDumps > 1 {
				t.Errorf("dumps on %q, %d recoveries, %d after-dump calls; want one dump, a recovery", f.parents, f.recoveries, afterDumps)
			}
			if _, err := os.Stat(filepath.Join(cp.ImageDir, ReportFile)); !os.IsNotExist(err) {
				t.Errorf("a failed checkpoint wrote its report: %v", err)
			}
		})
	}
}

func TestCheckpointOneShotFails(t *testing.T) {
	f := &fakeCRIU{finals: synthetic(1), failAll: true}
	e := newFakeEngine(t, f, fixed(1))
	if _, err := e.Checkpoint(t.Context(), e.Skip(TriggerCheckpoint, "mode is never"), f.checkpoint); err == nil || f.recoveries != 1 {
		t.Fatalf("error %v, %d recoveries; want the dump's error and a recovery", err, f.recoveries)
	}
}

// TestCheckpointThawedEarly: AfterDump runs once, after the dump, and the
// work done after the thaw is in the report.
func TestCheckpointThawedEarly(t *testing.T) {
	f := &fakeCRIU{rounds: synthetic(1), finals: synthetic(1)}
	e := newFakeEngine(t, f, fixed(1))
	r := e.PreCopy(t.Context(), TriggerPause, nil, false)
	r.Report.Thaw = &Thaw{Reason: "test"}
	cp := f.checkpoint
	var afterDumps int
	cp.AfterDump = func(context.Context) bool {
		afterDumps++
		if len(f.parents) != 1 {
			t.Error("AfterDump before the dump")
		}
		r.Report.Thaw.Early = true
		return true
	}
	report, err := e.Checkpoint(t.Context(), r, cp)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, e, cp, report)
	if afterDumps != 1 || !slices.Equal(report.Thaw.AfterThaw, []string{"flatten of the final dump with the last round", "report"}) {
		t.Errorf("%d after-dump calls, after thaw %q", afterDumps, report.Thaw.AfterThaw)
	}
}

func TestCheckpointKeepsCRIULog(t *testing.T) {
	f := &fakeCRIU{finals: synthetic(1)}
	e := newFakeEngine(t, f, fixed(1))
	cp := f.checkpoint
	cp.KeepCRIULog = true
	if err := os.MkdirAll(cp.WorkDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cp.WorkDir, "dump.log"), []byte("log"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Checkpoint(t.Context(), e.Skip(TriggerCheckpoint, "test"), cp); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(cp.ImageDir, "dump.log")); err != nil || string(b) != "log" {
		t.Errorf("CRIU's log in the image: %q, %v", b, err)
	}
}

func TestReadDumpStatsRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadDumpStats(dir); err == nil {
		t.Error("no stats-dump: no error")
	}
	if err := os.WriteFile(filepath.Join(dir, "stats-dump"), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDumpStats(dir); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("a truncated stats-dump: %v", err)
	}
}

func TestResidentBytes(t *testing.T) {
	if n := ResidentBytes([]int{os.Getpid(), 1 << 30}); n == 0 {
		t.Error("this process has no resident memory")
	}
}

// secondCheckpoint is a fake engine of fixed(2) rounds whose task was
// checkpointed once (leave-running), ready for its second checkpoint, and
// the flattens it runs from then on, each with the number of final dumps
// done before it.
func secondCheckpoint(t *testing.T, failOn string) (*Engine, *fakeCRIU, *[]string) {
	return secondCheckpointOf(t, 2, failOn)
}

// secondCheckpointOf is secondCheckpoint with rounds fixed rounds.
func secondCheckpointOf(t *testing.T, rounds int, failOn string) (*Engine, *fakeCRIU, *[]string) {
	t.Helper()
	f := &fakeCRIU{rounds: synthetic(rounds), finals: synthetic(1)}
	e := newFakeEngine(t, f, fixed(rounds))
	checkpointInto(t, e, f, "image1")
	var flattens []string
	flatten := flattenParent(failOn)
	e.Flatten = func(dir, within string) (imagechain.Result, error) {
		flattens = append(flattens, fmt.Sprintf("%s after %d dumps", filepath.Base(dir), len(f.parents)))
		f.clock.now = f.clock.now.Add(time.Millisecond)
		return flatten(dir, within)
	}
	return e, f, &flattens
}

// checkpointThawing checkpoints r into a new image dir, name, thawing the
// container right after the final dump, and checks the report.
func checkpointThawing(t *testing.T, e *Engine, f *fakeCRIU, r *Rounds, name string) *Report {
	t.Helper()
	r.Report.Thaw = &Thaw{Reason: "test"}
	cp := nextImage(t, f, name)
	cp.AfterDump = func(context.Context) bool { return true }
	report, err := e.Checkpoint(t.Context(), r, cp)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, e, cp, report)
	return report
}

// TestCheckpointDefersLastFlatten: when the container will run again right
// after the final dump, the last round stays chained to the one before
// while the container is frozen, and its flatten runs after the thaw,
// before the final flatten; the report says so.
func TestCheckpointDefersLastFlatten(t *testing.T) {
	e, f, flattens := secondCheckpoint(t, "")
	r := e.PreCopy(t.Context(), TriggerPause, nil, true)
	if _, err := os.Readlink(filepath.Join(r.image, "parent")); err != nil || len(*flattens) != 0 {
		t.Fatalf("last round's parent link: %v; flattens %q: want none before the final dump", err, *flattens)
	}
	if rd := r.Report.Rounds[1]; rd.Flatten != 0 || rd.ImageBytes != dirBytes(r.image) {
		t.Errorf("unflattened round 2: %+v; want no flatten and its own size (%d)", rd, dirBytes(r.image))
	}
	report := checkpointThawing(t, e, f, r, "image2")
	if want := []string{"round-2 after 2 dumps", "image2 after 2 dumps"}; !slices.Equal(*flattens, want) {
		t.Errorf("flattens %q, want %q", *flattens, want)
	}
	if want := []string{"flatten of round 2", "flatten of the final dump with the last round", "report"}; !slices.Equal(report.Thaw.AfterThaw, want) {
		t.Errorf("after the thaw %q, want %q", report.Thaw.AfterThaw, want)
	}
	if rd := report.Rounds[1]; !rd.FlattenAfterDump || rd.Flatten == 0 || report.Rounds[0].FlattenAfterDump {
		t.Errorf("rounds %+v: want round 2's flatten after the dump, measured", report.Rounds)
	}
}

// TestCheckpointDefersEveryRoundsFlatten: with the flattens deferred, each
// round dumps on the unflattened one before it (a chain down to round 1),
// and after the final dump the rounds are flattened oldest first, each one
// level, then the final dump; the report says which ran after the dump.
func TestCheckpointDefersEveryRoundsFlatten(t *testing.T) {
	e, f, flattens := secondCheckpointOf(t, 3, "")
	r := e.PreCopy(t.Context(), TriggerPause, nil, true)
	if len(*flattens) != 0 || !slices.Equal(r.pending, []int{2, 3}) {
		t.Fatalf("flattens %q, pending rounds %v: want none flattened, rounds 2 and 3 pending", *flattens, r.pending)
	}
	for i, d := range f.predumps[len(f.predumps)-3:] {
		want := ""
		if i > 0 {
			want = fmt.Sprintf("../round-%d", i)
		}
		if d.Parent != want {
			t.Errorf("round %d dumped on %q, want %q", i+1, d.Parent, want)
		}
	}
	report := checkpointThawing(t, e, f, r, "image2")
	if want := []string{"round-2 after 2 dumps", "round-3 after 2 dumps", "image2 after 2 dumps"}; !slices.Equal(*flattens, want) {
		t.Errorf("flattens %q, want %q", *flattens, want)
	}
	if want := []string{"flatten of round 2", "flatten of round 3", "flatten of the final dump with the last round", "report"}; !slices.Equal(report.Thaw.AfterThaw, want) {
		t.Errorf("after the thaw %q, want %q", report.Thaw.AfterThaw, want)
	}
	for _, rd := range report.Rounds {
		if deferred := rd.Index > 1; rd.FlattenAfterDump != deferred || (rd.Flatten != 0) != deferred {
			t.Errorf("round %d: %+v; want its flatten after the dump: %v", rd.Index, rd, deferred)
		}
	}
}

// TestCheckpointFlattensBeforeTheFreeze: the last round is flattened before
// the freeze when the caller does not expect the container to run right
// after the final dump, and on a task's first checkpoint, which may be one
// that stops it (a client pauses before either).
func TestCheckpointFlattensBeforeTheFreeze(t *testing.T) {
	for name, first := range map[string]bool{"not expected to run": false, "first checkpoint": true} {
		t.Run(name, func(t *testing.T) {
			f := &fakeCRIU{rounds: synthetic(2), finals: synthetic(1)}
			e := newFakeEngine(t, f, fixed(2))
			if !first {
				checkpointInto(t, e, f, "image1")
			}
			r := e.PreCopy(t.Context(), TriggerPause, nil, first)
			defer r.Discard()
			if _, err := os.Lstat(filepath.Join(r.image, "parent")); !os.IsNotExist(err) || r.Report.Rounds[1].FlattenAfterDump {
				t.Errorf("last round not flattened before the freeze: %v, %+v", err, r.Report.Rounds[1])
			}
		})
	}
}

// TestCheckpointDeferredFlattenFails: a deferred flatten that fails after
// the thaw fails the checkpoint (not redone: the container ran on), and
// hands out no image; before a thaw that did not come it is redone
// one-shot, as a failed final flatten is.
func TestCheckpointDeferredFlattenFails(t *testing.T) {
	for name, thaw := range map[string]bool{"thawed": true, "not thawed": false} {
		t.Run(name, func(t *testing.T) {
			e, f, _ := secondCheckpoint(t, "round-2")
			f.finals = twoFinals()
			r := e.PreCopy(t.Context(), TriggerPause, nil, true)
			cp := nextImage(t, f, "image2")
			cp.AfterDump = func(context.Context) bool { return thaw }
			report, err := e.Checkpoint(t.Context(), r, cp)
			if thaw {
				if err == nil || !strings.Contains(err.Error(), "after the final dump: flatten round 2") || !strings.Contains(err.Error(), "not redone") {
					t.Fatalf("error %v; want the deferred flatten's, not redone", err)
				}
				if _, err := os.Stat(filepath.Join(cp.ImageDir, ReportFile)); !os.IsNotExist(err) {
					t.Errorf("a failed checkpoint wrote its report: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkReport(t, e, cp, report)
			// The first checkpoint's final dump, this one's on the rounds,
			// and its one-shot redo.
			if !strings.Contains(report.FellBack, "after the final dump: flatten round 2") || len(f.parents) != 3 || f.parents[1] == "" || f.parents[2] != "" {
				t.Errorf("fell back %q, final dumps on %q; want the deferred flatten's error and a one-shot dump", report.FellBack, f.parents)
			}
			if report.Rounds[1].FlattenAfterDump {
				t.Errorf("round 2: %+v; the report claims the flatten that failed", report.Rounds[1])
			}
		})
	}
}
