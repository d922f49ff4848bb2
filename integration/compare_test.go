package integration

import (
	"os"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// Cases from containerd's client checkpoint tests
// (integration/client/container_checkpoint_test.go) that precopy's other
// tests do not already cover.

// TestCheckpointRestorePTY is containerd's TestCheckpointRestorePTY on
// precopy's runtime: a container with a terminal, checkpointed in exit
// mode (Runtime, RW, TaskExit, Task, as there), which stops it, and
// restored with a new terminal, its memory intact. In the VM the Pause
// pre-copies the task with its pty.
func TestCheckpointRestorePTY(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	const id = "pty-src"
	task, err := newMemloadTaskIO(t, d, id, []oci.SpecOpts{oci.WithTTY}, cio.NewCreator(cio.WithStreams(nil, os.Stderr, nil), cio.WithTerminal), preCopiedArgs...)
	if err != nil {
		t.Fatalf("create task with a terminal: %v", err)
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitMemloadReady(t, d, task)
	before := queryMemload(t, ctx, task)

	ctr, err := d.Client().LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	const ref = "precopy.test/checkpoint:pty"
	removeImageAtEnd(t, d, ref)
	// containerd's test does not pause: its client's Container.Checkpoint
	// diffs the rw layer (RW comes before Task) while the task runs,
	// which restores a rootfs older than the memory (the workload sees
	// it, whatever the runtime). Paused first, as ctr does.
	if _, err := task.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if err := task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ctr.Checkpoint(ctx, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW,
		containerd.WithCheckpointTaskExit, containerd.WithCheckpointTask); err != nil {
		t.Fatalf("exit-mode checkpoint of a task with a terminal: %v; containerd log:\n%s", err, d.LogTail(30))
	}
	<-exited
	report := requireFlatCheckpoint(t, ctx, d, ref)
	t.Logf("pre-copied %v, %d rounds, skipped %q", report.PreCopied, len(report.Rounds), report.Skipped)
	removeContainer(t, d, id)

	checkpoint, err := d.Client().GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeContainer(t, d, "pty-dst") })
	restored, err := d.Client().Restore(ctx, "pty-dst", checkpoint,
		containerd.WithRestoreImage, containerd.WithRestoreSpec, containerd.WithRestoreRuntime, containerd.WithRestoreRW)
	if err != nil {
		t.Fatal(err)
	}
	rtask, err := restored.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, os.Stderr, nil), cio.WithTerminal), containerd.WithTaskCheckpoint(checkpoint))
	if err != nil {
		t.Fatalf("restore with a new terminal: %v", err)
	}
	if err := rtask.Start(ctx); err != nil {
		t.Fatal(err)
	}
	requireStatus(t, ctx, rtask, containerd.Running)
	checkMemoryContinued(t, before, queryMemload(t, ctx, rtask))
}
