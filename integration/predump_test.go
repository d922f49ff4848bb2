package integration

import (
	"os"
	"path/filepath"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	runc "github.com/containerd/go-runc"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/policy"
	precopyshim "github.com/precopy/precopy/shim"
)

// TestRuncPreDump checks what pre-copy stands on: on a kernel that tracks
// dirty memory, runc can pre-dump a container the harness started while it
// keeps running, and a dump with --parent-path then skips the pages the
// pre-dump already copied. It needs soft-dirty, so it runs in the VM tier.
func TestRuncPreDump(t *testing.T) {
	requireSoftDirty(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemload(t, d, "predump", precopyshim.Runtime)
	before := queryMemload(t, ctx, task)

	// The runc-v2 shim keeps runc's state in /run/containerd/runc/<namespace>.
	r := &runc.Runc{Root: filepath.Join("/run/containerd/runc", d.Namespace)}
	dir := t.TempDir()
	pre := &runc.CheckpointOpts{ImagePath: filepath.Join(dir, "1"), WorkDir: filepath.Join(dir, "work1")}
	if err := r.Checkpoint(ctx, task.ID(), pre, runc.PreDump); err != nil {
		t.Fatalf("runc checkpoint --pre-dump: %v\n%s", err, readFile(filepath.Join(pre.WorkDir, "dump.log")))
	}
	preStats := dumpStats(t, pre.WorkDir)
	if preStats.PagesWritten == 0 {
		t.Fatalf("pre-dump wrote no pages: %v", preStats)
	}
	requireStatus(t, ctx, task, containerd.Running)

	final := &runc.CheckpointOpts{ImagePath: filepath.Join(dir, "2"), WorkDir: filepath.Join(dir, "work2"), ParentPath: "../1"}
	if err := r.Checkpoint(ctx, task.ID(), final, runc.LeaveRunning); err != nil {
		t.Fatalf("runc checkpoint --parent-path: %v\n%s", err, readFile(filepath.Join(final.WorkDir, "dump.log")))
	}
	finalStats := dumpStats(t, final.WorkDir)
	t.Logf("pre-dump: %d pages written, frozen %v; dump: %d written, %d skipped as in parent, frozen %v",
		preStats.PagesWritten, preStats.Frozen,
		finalStats.PagesWritten, finalStats.PagesSkippedParent, finalStats.Frozen)
	if finalStats.PagesSkippedParent == 0 {
		t.Errorf("final dump skipped no page of its parent: memory tracking did not work")
	}
	if link, err := os.Readlink(filepath.Join(final.ImagePath, "parent")); err != nil || link != "../1" {
		t.Errorf("final dump's parent link = %q, %v; want ../1", link, err)
	}
	// The workload ran on, memory intact, through both.
	checkMemoryContinued(t, before, queryMemload(t, ctx, task))
}

// dumpStats reads CRIU's dump statistics, which it writes to its work dir.
func dumpStats(t *testing.T, workDir string) policy.Round {
	t.Helper()
	st, err := precopy.ReadDumpStats(workDir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
