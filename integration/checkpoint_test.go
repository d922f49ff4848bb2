package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/integration/harness"
	precopyshim "github.com/precopy/precopy/shim"
)

// TestCheckpointRestoreCtr checkpoints a container on precopy's runtime the
// way an operator does, `ctr c checkpoint --task --rw`, restores it with
// `ctr c restore --live --rw`, and checks the restored workload's memory.
func TestCheckpointRestoreCtr(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	src := runMemload(t, d, "ckpt-ctr-src", precopyshim.Runtime)
	before := queryMemload(t, ctx, src)

	const ref = "precopy.test/checkpoint:ctr"
	checkpointCtr(t, ctx, d, src.ID(), ref)
	// The checkpoint resumed the source; it must have kept its memory too.
	checkMemoryContinued(t, before, queryMemload(t, ctx, src))
	removeContainer(t, d, src.ID())

	restored := restoreCtr(t, ctx, d, "ckpt-ctr-dst", ref)
	requireShim(t, ctx, restored, stack.bins.Path(harness.ShimBinary))
	checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
}

// TestRestoreWithStockRuncV2 restores a checkpoint taken by precopy's shim
// with containerd's own runc-v2 shim: precopy's images must stay ordinary
// containerd checkpoints.
func TestRestoreWithStockRuncV2(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	src := runMemload(t, d, "stock-src", precopyshim.Runtime)
	before := queryMemload(t, ctx, src)
	const ref = "precopy.test/checkpoint:for-stock"
	checkpointCtr(t, ctx, d, src.ID(), ref)
	removeContainer(t, d, src.ID())

	task := restoreWithStockRuncV2(t, ctx, d, "stock-dst", ref)
	checkMemoryContinued(t, before, queryMemload(t, ctx, task))
}

// TestDropInAsRuncV2 installs precopy's shim as containerd-shim-runc-v2, so
// that containerd serves io.containerd.runc.v2 with it, and checkpoints and
// restores through that name: the name for which nerdctl and the CRI
// plugin send runc's checkpoint options.
func TestDropInAsRuncV2(t *testing.T) {
	requireStack(t)
	ctx := context.Background()
	dropIn, err := stack.bins.DropInDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d, err := harness.StartDaemon(ctx, harness.Options{
		ShimDirs:  []string{dropIn, stack.bins.Dir},
		Namespace: stack.daemon.Namespace + "-dropin",
		Env:       stack.criuEnv,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	if err := harness.ImportMemload(d.Context(ctx), d.Client(), stack.bins); err != nil {
		t.Fatal(err)
	}
	ctx = testContext(t, d)
	dropInShim := filepath.Join(dropIn, "containerd-shim-runc-v2")

	src := runMemload(t, d, "dropin-src", precopyshim.RuncRuntime)
	requireShim(t, ctx, src, dropInShim)
	before := queryMemload(t, ctx, src)
	const ref = "precopy.test/checkpoint:dropin"
	checkpointCtr(t, ctx, d, src.ID(), ref)
	removeContainer(t, d, src.ID())

	restored := restoreCtr(t, ctx, d, "dropin-dst", ref)
	requireShim(t, ctx, restored, dropInShim)
	checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
}

// restoreWithStockRuncV2 restores checkpoint ref into container id with
// containerd's own runc-v2 shim, whatever runtime took it, and returns the
// running task; opts change the restored container after its spec is the
// checkpoint's.
func restoreWithStockRuncV2(t *testing.T, ctx context.Context, d *harness.Daemon, id, ref string, opts ...containerd.RestoreOpts) containerd.Task {
	t.Helper()
	c := d.Client()
	checkpoint, err := c.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeContainer(t, d, id) })
	stockRuntime := func(context.Context, string, *containerd.Client, containerd.Image, *ocispec.Index) containerd.NewContainerOpts {
		return containerd.WithRuntime(precopyshim.RuncRuntime, nil)
	}
	ctr, err := c.Restore(ctx, id, checkpoint, append([]containerd.RestoreOpts{
		containerd.WithRestoreImage, containerd.WithRestoreSpec, containerd.WithRestoreRW, stockRuntime}, opts...)...)
	if err != nil {
		t.Fatalf("restore container: %v", err)
	}
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, os.Stderr, os.Stderr)), containerd.WithTaskCheckpoint(checkpoint))
	if err != nil {
		t.Fatalf("restore task with stock runc-v2: %v", err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start restored task: %v", err)
	}
	stock, err := exec.LookPath("containerd-shim-runc-v2")
	if err != nil {
		t.Fatal(err)
	}
	requireShim(t, ctx, task, stock)
	return task
}

// checkpointCtr runs `ctr containers checkpoint --task --rw`, which pauses
// the task, checkpoints it into the image ref and resumes it.
func checkpointCtr(t *testing.T, ctx context.Context, d *harness.Daemon, id, ref string) {
	t.Helper()
	if _, err := d.Ctr(ctx, "containers", "checkpoint", "--task", "--rw", id, ref); err != nil {
		t.Fatalf("checkpoint: %v; containerd log:\n%s", err, d.LogTail(30))
	}
	requireStatus(t, ctx, loadTask(t, ctx, d, id), containerd.Running)
}

// restoreCtr runs `ctr containers restore --live --rw` into container id
// and returns its task.
func restoreCtr(t *testing.T, ctx context.Context, d *harness.Daemon, id, ref string) containerd.Task {
	t.Helper()
	t.Cleanup(func() { removeContainer(t, d, id) })
	if _, err := d.Ctr(ctx, "containers", "restore", "--live", "--rw", id, ref); err != nil {
		t.Fatalf("restore: %v; containerd log:\n%s", err, d.LogTail(30))
	}
	task := loadTask(t, ctx, d, id)
	requireStatus(t, ctx, task, containerd.Running)
	return task
}

func loadTask(t *testing.T, ctx context.Context, d *harness.Daemon, id string) containerd.Task {
	t.Helper()
	ctr, err := d.Client().LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatalf("task of %s: %v", id, err)
	}
	return task
}
