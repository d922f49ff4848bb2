package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/precopy"
	precopyshim "github.com/precopy/precopy/shim"
)

// TestPreCopyCheckpoint checkpoints the workload through an unchanged
// client (`ctr c checkpoint --task --rw`: Pause, Checkpoint, Resume) on a
// kernel with soft-dirty: the shim pre-copies during Pause, the final dump
// goes on top of the rounds, and the image containerd stores is one flat
// CRIU image set with precopy's report in it, which restores with
// precopy's shim and with the stock runc-v2 shim.
func TestPreCopyCheckpoint(t *testing.T) {
	requireSoftDirty(t)
	d := stack.daemon
	ctx := testContext(t, d)
	// Above the policy's default minimum size (64 MiB), below which
	// pre-copy buys nothing.
	src := runMemloadWith(t, d, "precopy-src", precopyshim.Runtime, "-mib", "96", "-dirty-mibps", "4", "-hot", "0.1")
	before := queryMemload(t, ctx, src)

	const ref = "precopy.test/checkpoint:precopy"
	checkpointCtr(t, ctx, d, src.ID(), ref)
	checkMemoryContinued(t, before, queryMemload(t, ctx, src))
	removeContainer(t, d, src.ID())

	report := requireFlatCheckpoint(t, ctx, d, ref)
	if !report.PreCopied || len(report.Rounds) == 0 {
		t.Fatalf("checkpoint was not pre-copied: %+v", report)
	}
	if report.Final == nil || report.Final.PagesSkippedParent == 0 {
		t.Errorf("final dump skipped no page of its parent: %+v", report.Final)
	}
	t.Logf("pre-copy: %d rounds (%s), predicted freeze %v, final dump froze %v writing %d pages, flatten %v",
		len(report.Rounds), report.Stop.Reason, report.Stop.PredictedFreeze, report.Final.Freeze(),
		report.Final.PagesWritten, report.FinalFlatten)

	restored := restoreCtr(t, ctx, d, "precopy-dst", ref)
	requireShim(t, ctx, restored, stack.bins.Path(harness.ShimBinary))
	checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
	removeContainer(t, d, restored.ID())

	// Flat and self-contained: containerd's own shim restores it too.
	stock := restoreWithStockRuncV2(t, ctx, d, "precopy-stock-dst", ref)
	checkMemoryContinued(t, before, queryMemload(t, ctx, stock))
}

// TestOneShotFallback checks that a checkpoint pre-copy skips is one-shot,
// flat, and says why in its report: on a kernel that cannot track dirty
// memory (natively here), and for a container below the policy's minimum
// size (in the VM).
func TestOneShotFallback(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	src := runMemload(t, d, "oneshot-src", precopyshim.Runtime) // 32 MiB
	const ref = "precopy.test/checkpoint:oneshot"
	checkpointCtr(t, ctx, d, src.ID(), ref)
	report := requireFlatCheckpoint(t, ctx, d, ref)
	want := "dirty memory"
	if stack.softDirty {
		want = "too-small"
	}
	if report.PreCopied || !strings.Contains(report.Skipped, want) {
		t.Errorf("report does not say pre-copy was skipped (%q): %+v", want, report)
	}
	t.Logf("skipped: %s", report.Skipped)
}

// requireFlatCheckpoint asserts that the CRIU tar of checkpoint ref is one
// flat image set, as the CRI plugin needs, and returns precopy's report
// from it.
func requireFlatCheckpoint(t *testing.T, ctx context.Context, d *harness.Daemon, ref string) *precopy.Report {
	t.Helper()
	cp, err := harness.ReadCheckpoint(ctx, d.Client(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if bad := cp.NotFlat(); len(bad) > 0 {
		t.Errorf("checkpoint %s is not one flat image set: %s", ref, strings.Join(bad, ", "))
	}
	if cp.Report == nil {
		t.Fatalf("checkpoint %s has no %s", ref, precopy.ReportFile)
	}
	return cp.Report
}

// TestPauseWithoutCheckpoint pauses and resumes a container with no
// checkpoint between: the container is paused as asked, and the rounds the
// Pause pre-copied (where the kernel can) are gone after the Resume.
func TestPauseWithoutCheckpoint(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "pause-only", precopyshim.Runtime, "-mib", "96", "-dirty-mibps", "4", "-hot", "0.1")
	rounds := filepath.Join(filepath.Dir(d.RootfsPath(task.ID())), "precopy")
	if err := task.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	requireStatus(t, ctx, task, containerd.Paused)
	_, err := os.Stat(rounds)
	if stack.softDirty && err != nil {
		t.Errorf("pause pre-copied no rounds: %v", err)
	}
	if !stack.softDirty && !os.IsNotExist(err) {
		t.Errorf("pause without soft-dirty left %s: %v", rounds, err)
	}
	if err := task.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	requireStatus(t, ctx, task, containerd.Running)
	if _, err := os.Stat(rounds); !os.IsNotExist(err) {
		t.Errorf("rounds kept after resume: %v", err)
	}
	if err := queryMemload(t, ctx, task).Check(); err != nil {
		t.Error(err)
	}
}
