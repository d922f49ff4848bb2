package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	precopyshim "github.com/precopy/precopy/shim"
)

// TestEarlyThawPinned checkpoints a container whose writable rootfs is on
// precopyd's snapshotter, with a shim configured to ask that precopyd for
// pins, through a client that diffs the rw layer after the task's
// checkpoint (containerd's client with WithCheckpointTask before
// WithCheckpointRW): the order in which an early thaw without a pin would
// let writes made after the dump into the diff. The shim pins the layer
// and thaws right after the dump; the workload goes on rewriting its
// status file in the rootfs; the diff still holds the file as it was
// before the thaw; Resume succeeds; the pin is gone afterwards; the image
// restores, with our shim and with stock runc-v2, with the workload's
// memory intact and its rootfs at the same moment as its memory.
func TestEarlyThawPinned(t *testing.T) {
	ms := startMemoryStackWith(t, "pinthaw", harness.PrecopydOptions{ContentLimit: 1 << 30, SnapshotLimit: 512 << 20}, harness.PrecopydSnapshotter, true)
	d := ms.daemon
	ctx := testContext(t, d)
	args := []string{"-mib", "32", "-status-every", "20ms"}
	if stack.softDirty {
		args = []string{"-mib", "96", "-dirty-mibps", "4", "-hot", "0.1", "-status-every", "20ms"}
	}
	task := runMemloadWith(t, d, "pin-src", precopyshim.Runtime, args...)
	requireSnapshotter(t, ctx, d, task.ID(), harness.PrecopydSnapshotter)
	before := queryMemload(t, ctx, task)

	const ref = "precopy.test/checkpoint:pinthaw"
	ctr, err := d.Client().LoadContainer(ctx, task.ID())
	if err != nil {
		t.Fatal(err)
	}
	// As ctr and containerd's Task.Checkpoint do, look at the task right
	// before pausing it: the shim thaws early only a pause so preceded.
	if _, err := task.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if err := task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	_, cerr := ctr.Checkpoint(ctx, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointTask, containerd.WithCheckpointRW)
	if err := task.Resume(ctx); err != nil {
		t.Errorf("resume after the checkpoint: %v", err)
	}
	if cerr != nil {
		t.Fatalf("checkpoint: %v; containerd log:\n%s", cerr, d.LogTail(30))
	}
	requireStatus(t, ctx, task, containerd.Running)

	report := requireFlatCheckpoint(t, ctx, d, ref)
	th := report.Thaw
	t.Logf("thaw: %+v", th)
	if th == nil || !th.Early || !th.Pinned {
		t.Fatalf("want an early thaw on a pinned writable layer: %+v", th)
	}
	// The workload wrote its status after the thaw ...
	live := filepath.Join(d.RootfsPath(task.ID()), "status.json")
	waitFor(t, "a status written after the thaw", func() bool {
		s, err := workload.ReadStatus(live)
		return err == nil && s.WrittenAt.After(th.ThawedAt)
	})
	// ... but the diff, taken after the thaw, holds the one from before.
	b, err := rwDiffFile(ctx, d, ref, "status.json")
	if err != nil {
		t.Fatal(err)
	}
	var inDiff workload.Status
	if err := json.Unmarshal(b, &inDiff); err != nil {
		t.Fatal(err)
	}
	if !inDiff.WrittenAt.Before(th.ThawedAt) {
		t.Errorf("the rw diff's status.json was written at %v, after the thaw at %v: the diff did not see the pinned layer", inDiff.WrittenAt, th.ThawedAt)
	}
	if pins, _ := os.ReadDir(filepath.Join(ms.precopyd.StateDir, "snapshotter", "fs", "pins")); len(pins) != 0 {
		t.Errorf("%d pins left after the client's resume", len(pins))
	}

	// Restored, by precopy and by stock runc-v2, the rootfs holds the
	// status file the memory image last wrote (checkMemoryContinued).
	removeContainer(t, d, task.ID())
	restored := restoreCtr(t, ctx, d, "pin-dst", ref)
	checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
	removeContainer(t, d, restored.ID())
	stock := restoreWithStockRuncV2(t, ctx, d, "pin-stock-dst", ref)
	checkMemoryContinued(t, before, queryMemload(t, ctx, stock))
}

// rwDiffFile reads file name from the rw-layer diff of checkpoint ref.
func rwDiffFile(ctx context.Context, d *harness.Daemon, ref, name string) ([]byte, error) {
	img, err := d.Client().GetImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	store := d.Client().ContentStore()
	b, err := content.ReadBlob(ctx, store, img.Target())
	if err != nil {
		return nil, err
	}
	var index ocispec.Index
	if err := json.Unmarshal(b, &index); err != nil {
		return nil, err
	}
	for _, desc := range index.Manifests {
		if images.IsLayerType(desc.MediaType) {
			return harness.LayerFile(ctx, store, desc, name)
		}
	}
	return nil, fmt.Errorf("checkpoint %s has no rw diff", ref)
}
