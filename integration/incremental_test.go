package integration

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/policy"
	"github.com/precopy/precopy/precopy/settings"
	precopyshim "github.com/precopy/precopy/shim"
)

// incrementalOn turns incremental checkpoints on, for the tests' small
// workload too (pre-copy skips containers under 64 MiB by default).
var incrementalOn = map[string]string{settings.AnnotationIncremental: "on", settings.AnnotationMinSize: "16MiB"}

// TestIncrementalCheckpointRestore checkpoints the workload, lets it
// rewrite part of its memory, checkpoints it again (the first round
// dumping against the first checkpoint's kept image), kills it, and
// restores the second checkpoint: every page verifies, the memory is the
// second checkpoint's (it answered a query made between the two), and
// the counter goes on from there. Then again with the first
// checkpoint's image removed: the second is complete on its own. A page
// the workload rewrote between the checkpoints and the second one took
// from the first's image would fail the workload's verification. It
// needs pre-dump, so it runs in the VM tier.
func TestIncrementalCheckpointRestore(t *testing.T) {
	requireSoftDirty(t)
	d := stack.daemon
	ctx := testContext(t, d)
	const id = "incremental-src"
	task := runMemloadAnnotated(t, d, id, precopyshim.Runtime, incrementalOn, memloadArgs...)

	const ref1, ref2 = "precopy.test/checkpoint:incremental-1", "precopy.test/checkpoint:incremental-2"
	first := checkpointReport(t, ctx, d, id, ref1, "first checkpoint")
	if inc := first.Incremental; !first.PreCopied || inc == nil || !inc.Kept || inc.Parent != nil {
		t.Fatalf("first checkpoint: pre-copied %v, incremental %+v; want pre-copied, kept, no parent", first.PreCopied, inc)
	}

	// The workload rewrites part of its memory: wait until it has
	// rewritten as many pages as its hot set holds.
	start := queryMemload(t, ctx, task)
	for st := start; st.Cursor < start.Cursor+st.HotPages; st = queryMemload(t, ctx, task) {
		time.Sleep(200 * time.Millisecond)
	}
	// A query marks the memory (its query count) between the two.
	marked := queryMemload(t, ctx, task)
	second := checkpointReport(t, ctx, d, id, ref2, "second checkpoint")
	inc := second.Incremental
	if !second.PreCopied || inc == nil || inc.Parent == nil || inc.Parent.Number != 1 || inc.Number != 2 {
		t.Fatalf("second checkpoint: pre-copied %v, incremental %+v; want checkpoint 1 as parent", second.PreCopied, inc)
	}
	round1 := second.Rounds[0]
	t.Logf("second checkpoint's round 1: %d pages written, %d from checkpoint 1's image (first checkpoint's round 1 wrote %d)",
		round1.PagesWritten, inc.PagesFromParent, first.Rounds[0].PagesWritten)
	if inc.PagesFromParent == 0 || round1.PagesWritten >= first.Rounds[0].PagesWritten {
		t.Errorf("second checkpoint's round 1 wrote %d pages, took %d from its parent: not incremental", round1.PagesWritten, inc.PagesFromParent)
	}
	// A task's first checkpoint flattens every round before the freeze
	// (it could be one that stops the task); the second's rounds wait
	// for the final dump when the checkpoint thaws early, and the restore
	// below reads what their flattens made.
	if lastRound(first).FlattenAfterDump {
		t.Error("first checkpoint: the last round's flatten ran after the final dump")
	}
	if th := second.Thaw; th == nil || th.Early != lastRound(second).FlattenAfterDump {
		t.Errorf("second checkpoint: thaw %+v, last round's flatten after the final dump: %v; want both or neither", th, lastRound(second).FlattenAfterDump)
	}

	if err := syscall.Kill(int(task.Pid()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	removeContainer(t, d, id)
	restoreSecond := func(id string) {
		t.Helper()
		restored := restoreCtr(t, ctx, d, id, ref2)
		after := queryMemload(t, ctx, restored)
		checkMemoryContinued(t, marked, after)
		if after.QuerySeq <= marked.QuerySeq {
			t.Errorf("restored memory answered %d queries, the marked one %d: not the second checkpoint's memory", after.QuerySeq-1, marked.QuerySeq)
		}
		removeContainer(t, d, id)
	}
	restoreSecond("incremental-dst")
	if err := d.RemoveImage(ctx, ref1); err != nil {
		t.Fatal(err)
	}
	restoreSecond("incremental-dst-alone")
}

// checkpointReport checkpoints container id into image ref with ctr
// (removed at the test's end), logs its rounds as what, and returns its
// report.
func checkpointReport(t *testing.T, ctx context.Context, d *harness.Daemon, id, ref, what string) *precopy.Report {
	t.Helper()
	checkpointCtr(t, ctx, d, id, ref)
	t.Cleanup(func() { d.RemoveImage(ctx, ref) })
	r, err := harness.CheckpointReport(ctx, d.Client(), ref)
	if err != nil {
		t.Fatal(err)
	}
	logRounds(t, what, r)
	return r
}

// lastRound is r's last pre-copy round.
func lastRound(r *precopy.Report) policy.Round {
	if len(r.Rounds) == 0 {
		return policy.Round{}
	}
	return r.Rounds[len(r.Rounds)-1]
}

// logRounds logs what each round of checkpoint r wrote, what its flatten
// took over or copied of the previous image, why, and when it ran.
func logRounds(t *testing.T, what string, r *precopy.Report) {
	t.Helper()
	for _, rd := range r.Rounds {
		t.Logf("%s, round %d: %d pages written, %d skipped (parent), flatten %s (after the final dump: %v): %d pages taken over, %d copied; copied because: %q",
			what, rd.Index, rd.PagesWritten, rd.PagesSkippedParent, rd.Flatten, rd.FlattenAfterDump, rd.FlattenTakenOver, rd.FlattenCopied, rd.FlattenCopyReason)
	}
	if th := r.Thaw; th != nil {
		t.Logf("%s, thaw: early %v (%s), after it: %q", what, th.Early, th.Reason, th.AfterThaw)
	}
	if r.Final != nil {
		f := r.Final
		t.Logf("%s, final dump: %d pages written, %d skipped (parent), flatten %s: %d pages taken over, %d copied; copied because: %q",
			what, f.PagesWritten, f.PagesSkippedParent, r.FinalFlatten, f.FlattenTakenOver, f.FlattenCopied, f.FlattenCopyReason)
	}
}

// TestIncrementalRoundsDir: with the config file's rounds-dir, a
// container's rounds and kept image live in <rounds-dir>/<namespace>/<id>,
// not in its bundle: the first checkpoint's image is kept there, the
// second checkpoint dumps against it and restores with every page
// verified, and deleting the container removes its dir. It needs
// pre-dump, so it runs in the VM tier.
func TestIncrementalRoundsDir(t *testing.T) {
	requireSoftDirty(t)
	roundsDir := t.TempDir()
	config := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf("rounds-dir = %q\n", roundsDir)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startFaultDaemon(t, "roundsdir", harness.Options{Env: []string{"PRECOPY_CONFIG=" + config}})
	ctx := testContext(t, d)
	const id = "roundsdir-src"
	task := runMemloadAnnotated(t, d, id, precopyshim.Runtime, incrementalOn, memloadArgs...)
	own := filepath.Join(roundsDir, d.Namespace, id)
	bundle := filepath.Dir(d.RootfsPath(id))

	const ref1, ref2 = "precopy.test/checkpoint:roundsdir-1", "precopy.test/checkpoint:roundsdir-2"
	checkpointReport(t, ctx, d, id, ref1, "first checkpoint")
	if _, err := os.Stat(filepath.Join(own, "kept", "inventory.img")); err != nil {
		t.Fatalf("first checkpoint's image not kept in the rounds dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(bundle, "precopy")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("bundle's precopy dir: %v, want none with a rounds dir", err)
	}
	marked := queryMemload(t, ctx, task)
	second := checkpointReport(t, ctx, d, id, ref2, "second checkpoint")
	if inc := second.Incremental; inc == nil || inc.Parent == nil || inc.Parent.Number != 1 || inc.PagesFromParent == 0 {
		t.Fatalf("second checkpoint: incremental %+v; want pages from checkpoint 1's kept image", inc)
	}

	removeContainer(t, d, id)
	if _, err := os.Stat(own); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after delete, %s: %v, want it removed", own, err)
	}
	restored := restoreCtr(t, ctx, d, "roundsdir-dst", ref2)
	checkMemoryContinued(t, marked, queryMemload(t, ctx, restored))
	removeContainer(t, d, "roundsdir-dst")
	if entries, err := os.ReadDir(roundsDir); err != nil || len(entries) != 0 {
		t.Errorf("rounds dir after both containers were deleted: %v, %v; want it empty", entries, err)
	}
}
