package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/rootfs"
	"github.com/containerd/typeurl/v2"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
	precopyshim "github.com/precopy/precopy/shim"
	"github.com/precopy/precopy/snapshotter/pin"
)

// The tests in this file run on the test daemon's own snapshotter,
// containerd's overlayfs, with a writable rootfs: the common case, where
// the shim pins the writable layer itself (a read-only copy bind-mounted
// over the upper dir's path in containerd's mount namespace) so that the
// container can run again right after its final dump.

// overlayArgs make memload rewrite its status file in the rootfs often, so
// that a diff that saw the live layer after the thaw would show a newer
// one; large enough in the VM to be pre-copied.
func overlayArgs() []string {
	if stack.softDirty {
		return []string{"-mib", "96", "-dirty-mibps", "4", "-hot", "0.1", "-status-every", "20ms"}
	}
	return []string{"-mib", "32", "-status-every", "20ms"}
}

// requireShimPin fails t unless report says the shim thawed early on a
// pin of its own.
func requireShimPin(t *testing.T, report *precopy.Report) {
	t.Helper()
	th := report.Thaw
	if th == nil || !th.Early || !th.Pinned || !strings.HasPrefix(th.PinWhere, "shim:") {
		t.Fatalf("want an early thaw on a writable layer the shim pinned: %+v", th)
	}
	t.Logf("pinned %d bytes in %d files in %v", th.PinBytes, th.PinFiles, th.PinCost)
}

// TestEarlyThawOverlay checkpoints a container with a writable rootfs on
// containerd's overlayfs snapshotter through the clients users have:
// `ctr c checkpoint --task --rw` (which diffs the rw layer before the
// task's checkpoint) and containerd's Task.Checkpoint (which diffs it
// after, as nerdctl and the CRI plugin do). Both thaw right after the
// final dump; the diff holds the status file from before the thaw; the
// image restores with precopy and with stock runc-v2, the rootfs at the
// moment of the memory; no pin is left.
func TestEarlyThawOverlay(t *testing.T) {
	requireStack(t)
	d := stack.daemon

	t.Run("ctr", func(t *testing.T) {
		ctx := testContext(t, d)
		task := runMemloadWith(t, d, "overlay-ctr", precopyshim.Runtime, overlayArgs()...)
		before := queryMemload(t, ctx, task)
		const ref = "precopy.test/overlay:ctr"
		report, _ := checkpointWatched(t, ctx, d, task.ID(), ref, true)
		requireShimPin(t, report)
		requireNoPins(t, d)
		removeContainer(t, d, task.ID())
		restored := restoreCtr(t, ctx, d, "overlay-ctr-dst", ref)
		checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
	})

	t.Run("Task.Checkpoint", func(t *testing.T) {
		ctx := testContext(t, d)
		task := runMemloadWith(t, d, "overlay-task", precopyshim.Runtime, overlayArgs()...)
		before := queryMemload(t, ctx, task)
		img, err := task.Checkpoint(ctx, containerd.WithCheckpointName("precopy.test/overlay:task"))
		if err != nil {
			t.Fatalf("Task.Checkpoint: %v; containerd log:\n%s", err, d.LogTail(30))
		}
		requireStatus(t, ctx, task, containerd.Running)
		ref := img.Name()
		report := requireFlatCheckpoint(t, ctx, d, ref)
		requireShimPin(t, report)
		// The workload wrote its status after the thaw, but the diff,
		// taken after the thaw, holds the one from before.
		waitForNewerStatus(t, d, task.ID(), report.Thaw.ThawedAt)
		requireDiffStatusBefore(t, ctx, d, ref, report.Thaw.ThawedAt)
		requireNoPins(t, d)
		removeContainer(t, d, task.ID())
		restored := restoreTaskCheckpoint(t, ctx, d, "overlay-task-dst", ref, precopyshim.Runtime)
		checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
		removeContainer(t, d, restored.ID())
		stock := restoreTaskCheckpoint(t, ctx, d, "overlay-task-stock", ref, precopyshim.RuncRuntime)
		checkMemoryContinued(t, before, queryMemload(t, ctx, stock))
	})
}

// restoreTaskCheckpoint restores checkpoint ref, an image of
// containerd's Task.Checkpoint, into a new container id on runtime: a new
// snapshot of the workload's image with the checkpoint's rw diff applied
// (Task.Checkpoint's index names neither the image as ctr's restore wants
// it nor the snapshotter), the checkpoint's spec, and a task restored
// from its CRIU images; it returns the running task.
func restoreTaskCheckpoint(t *testing.T, ctx context.Context, d *harness.Daemon, id, ref, runtime string) containerd.Task {
	t.Helper()
	c := d.Client()
	checkpoint, err := c.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	b, err := content.ReadBlob(ctx, c.ContentStore(), checkpoint.Target())
	if err != nil {
		t.Fatal(err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(b, &index); err != nil {
		t.Fatal(err)
	}
	image, err := c.GetImage(ctx, harness.MemloadImage)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeContainer(t, d, id) })
	ctr, err := c.NewContainer(ctx, id, containerd.WithNewSnapshot(id, image),
		containerd.WithRestoreSpec(ctx, id, c, checkpoint, &index),
		containerd.WithRestoreRW(ctx, id, c, checkpoint, &index),
		containerd.WithRuntime(runtime, nil))
	if err != nil {
		t.Fatalf("restore container %s: %v", id, err)
	}
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, os.Stderr, os.Stderr)), containerd.WithTaskCheckpoint(checkpoint))
	if err != nil {
		t.Fatalf("restore task %s on %s: %v", id, runtime, err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start restored task: %v", err)
	}
	return task
}

// TestEarlyThawPinnedView checks what the pin gives the client's diff
// file by file: the task's checkpoint is taken as Task.Checkpoint takes
// it (State, Pause, Checkpoint), then, with the container running again,
// the test writes one file into the rootfs and removes another, and only
// then diffs the rw layer as Task.Checkpoint does: the diff holds the
// layer of the dump (the file written before it, not the one written
// after, the removed one still there). Resume, which ends the
// checkpoint, releases the pin: no mount and no copy are left, and a diff
// now sees the live layer.
func TestEarlyThawPinnedView(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "pinned-view", precopyshim.Runtime, overlayArgs()...)
	rootfs := d.RootfsPath(task.ID())
	writeFile(t, filepath.Join(rootfs, "before-dump"), "written before the dump")
	writeFile(t, filepath.Join(rootfs, "removed-after"), "removed after the thaw")

	report := checkpointTaskRPC(t, ctx, d, task)
	requireShimPin(t, report)
	requireStatus(t, ctx, task, containerd.Running)
	writeFile(t, filepath.Join(rootfs, "after-thaw"), "written after the thaw")
	if err := os.Remove(filepath.Join(rootfs, "removed-after")); err != nil {
		t.Fatal(err)
	}

	files := rwDiffNames(t, ctx, d, task.ID())
	for name, want := range map[string]bool{"before-dump": true, "removed-after": true, "after-thaw": false} {
		if files[name] != want {
			t.Errorf("rw diff after the thaw has %s: %v, want %v (diff: %v)", name, files[name], want, files)
		}
	}
	if err := task.Resume(ctx); err != nil {
		t.Fatalf("the client's Resume after an early thaw: %v", err)
	}
	requireNoPins(t, d)
	// The upper dir's path, which the diff reads, is the live layer
	// again. (Not diffed: a diff of a layer the workload is rewriting
	// fails when a file goes between its walk and its read.)
	upper := upperDir(t, ctx, d, task.ID())
	if _, err := os.Stat(filepath.Join(upper, "after-thaw")); err != nil {
		t.Errorf("the upper dir's path after the pin's release: %v", err)
	}
	if _, err := os.Stat(filepath.Join(upper, "removed-after")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the upper dir's path after the pin's release still has removed-after: %v", err)
	}
}

// upperDir is the upper dir of container id's writable layer, as its
// snapshotter mounts it.
func upperDir(t *testing.T, ctx context.Context, d *harness.Daemon, id string) string {
	t.Helper()
	c := d.Client()
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	info, err := ctr.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := c.SnapshotService(info.Snapshotter).Mounts(ctx, info.SnapshotKey)
	if err != nil || len(mounts) != 1 {
		t.Fatalf("mounts of %s: %v, %v", id, mounts, err)
	}
	upper := pin.UpperDir(mounts[0].Type, mounts[0].Source, mounts[0].Options)
	if upper == "" {
		t.Fatalf("no upper dir in %+v", mounts[0])
	}
	return upper
}

// TestEarlyThawPinShimKilled kills the shim with SIGKILL while it holds a
// pin (between the task's checkpoint and the client's Resume): containerd
// cleans the dead shim's task up (it runs the shim binary's delete), and
// afterwards the container and its snapshot are removed without error and
// neither the pin's mount nor its copy is left.
func TestEarlyThawPinShimKilled(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "pin-shim-killed", precopyshim.Runtime, overlayArgs()...)
	report := checkpointTaskRPC(t, ctx, d, task)
	requireShimPin(t, report)
	if len(pinMounts(t, d)) == 0 {
		t.Fatal("no pin mounted after an early thaw on a shim pin")
	}
	// containerd publishes TaskDelete once its cleanup after the dead
	// shim, which runs the shim binary's delete, is over.
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	envelopes, errs := d.Client().EventService().Subscribe(ectx, `topic=="/tasks/delete"`)
	shim := shimPid(t, task)
	if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deleted := false; !deleted; {
		select {
		case e := <-envelopes:
			v, err := typeurl.UnmarshalAny(e.Event)
			deleted = err == nil && v.(*apievents.TaskDelete).ContainerID == task.ID()
		case err := <-errs:
			t.Fatalf("waiting for containerd's cleanup after the dead shim: %v", err)
		}
	}
	ctr, err := d.Client().LoadContainer(ctx, task.ID())
	if err != nil {
		t.Fatal(err)
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatalf("delete the container and its snapshot after the shim died holding a pin: %v", err)
	}
	requireNoPins(t, d)
	if t.Failed() {
		t.Logf("containerd log:\n%s", d.LogTail(40))
	}
}

// TestEarlyThawLayerOverLimit checkpoints a container whose writable
// layer is larger than its pin limit: the shim does not copy it, the
// container stays frozen until the client's Resume, and the report says
// why.
func TestEarlyThawLayerOverLimit(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemloadAnnotated(t, d, "pin-over-limit", precopyshim.Runtime,
		map[string]string{settings.AnnotationPinLimit: "1ms"}, append(overlayArgs(), "-rootfs-mib", "16")...)
	report, _ := checkpointWatched(t, ctx, d, task.ID(), "precopy.test/overlay:over-limit", false)
	if th := report.Thaw; th.Pinned || !strings.Contains(th.Reason, "limit") {
		t.Errorf("want no pin and a reason naming the limit: %+v", th)
	}
	requireNoPins(t, d)
}

// TestUserPauseStaysPaused checkpoints tasks a user paused, right after
// the pause: the checkpoint must leave them paused, as stock runc-v2
// does (containerd's TestCheckpointOnPauseStatus), whether the client
// looks at the task first (Task.Checkpoint, `ctr t checkpoint`: the shim
// answers State with paused) or not (containerd's container.Checkpoint
// with the task's checkpoint).
func TestUserPauseStaysPaused(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	check := func(t *testing.T, ctx context.Context, task containerd.Task, ref string) {
		t.Helper()
		requireStatus(t, ctx, task, containerd.Paused)
		report := requireFlatCheckpoint(t, ctx, d, ref)
		if report.Thaw == nil || report.Thaw.Early {
			t.Errorf("a user's pause was thawed: %+v", report.Thaw)
		}
		t.Logf("thaw: %+v", report.Thaw)
		if err := task.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		requireNoPins(t, d)
	}

	t.Run("ctr t checkpoint", func(t *testing.T) {
		ctx := testContext(t, d)
		task := runMemloadWith(t, d, "user-pause-ctr", precopyshim.Runtime, overlayArgs()...)
		if _, err := d.Ctr(ctx, "task", "pause", task.ID()); err != nil {
			t.Fatal(err)
		}
		out, err := d.Ctr(ctx, "task", "checkpoint", task.ID())
		if err != nil {
			t.Fatalf("ctr t checkpoint: %v", err)
		}
		check(t, ctx, task, strings.TrimSpace(out))
	})

	t.Run("container.Checkpoint", func(t *testing.T) {
		ctx := testContext(t, d)
		task := runMemloadWith(t, d, "user-pause-go", precopyshim.Runtime, overlayArgs()...)
		ctr, err := d.Client().LoadContainer(ctx, task.ID())
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		const ref = "precopy.test/overlay:user-pause-go"
		if _, err := ctr.Checkpoint(ctx, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW, containerd.WithCheckpointTask); err != nil {
			t.Fatalf("checkpoint: %v", err)
		}
		check(t, ctx, task, ref)
	})
}

// checkpointTaskRPC checkpoints task as containerd's Task.Checkpoint
// does up to its Checkpoint RPC (it looks at the task, pauses it, has the
// daemon checkpoint it into the content store) and returns precopy's
// report, leaving the rw diff and the Resume to the caller.
func checkpointTaskRPC(t *testing.T, ctx context.Context, d *harness.Daemon, task containerd.Task) *precopy.Report {
	t.Helper()
	if st, err := task.Status(ctx); err != nil || st.Status != containerd.Running {
		t.Fatalf("task before the checkpoint: %+v, %v", st, err)
	}
	if err := task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := d.Client().TaskService().Checkpoint(ctx, &tasks.CheckpointTaskRequest{ContainerID: task.ID()})
	if err != nil {
		t.Fatalf("checkpoint: %v; containerd log:\n%s", err, d.LogTail(30))
	}
	for _, d0 := range resp.Descriptors {
		desc := ocispec.Descriptor{MediaType: d0.MediaType, Digest: digest.Digest(d0.Digest), Size: d0.Size}
		cp, err := harness.ReadCRIUTar(ctx, d.Client().ContentStore(), desc)
		if errors.Is(err, harness.ErrNotCRIUTar) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if cp.Report == nil {
			t.Fatalf("the checkpoint's CRIU tar has no %s", precopy.ReportFile)
		}
		return cp.Report
	}
	t.Fatalf("the checkpoint returned no CRIU tar: %v", resp.Descriptors)
	return nil
}

// rwDiffNames diffs container id's writable layer as WithCheckpointRW and
// Task.Checkpoint do (rootfs.CreateDiff through the daemon's differ) and
// returns the names in the diff.
func rwDiffNames(t *testing.T, ctx context.Context, d *harness.Daemon, id string) map[string]bool {
	t.Helper()
	c := d.Client()
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	info, err := ctr.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The diff's blob is referenced by nothing: without a lease the
	// daemon's garbage collection (another test's image removal schedules
	// one) may take it before it is read, as containerd's own Checkpoint
	// diffs under a lease.
	ctx, done, err := c.WithLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer done(context.WithoutCancel(ctx))
	desc, err := rootfs.CreateDiff(ctx, info.SnapshotKey, c.SnapshotService(info.Snapshotter), c.DiffService(),
		diff.WithReference(fmt.Sprintf("test-rw-%s", info.SnapshotKey)))
	if err != nil {
		t.Fatalf("rw diff: %v", err)
	}
	names, err := harness.LayerNames(ctx, c.ContentStore(), desc)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// requireDiffStatusBefore fails t unless the status file in the rw diff
// of checkpoint ref was written before thawedAt.
func requireDiffStatusBefore(t *testing.T, ctx context.Context, d *harness.Daemon, ref string, thawedAt time.Time) {
	t.Helper()
	b, err := rwDiffFile(ctx, d, ref, "status.json")
	if err != nil {
		t.Fatal(err)
	}
	st, err := workload.ParseStatus(b)
	if err != nil {
		t.Fatal(err)
	}
	if !st.WrittenAt.Before(thawedAt) {
		t.Errorf("the rw diff's status.json was written at %v, after the thaw at %v: the diff did not see the pinned layer", st.WrittenAt, thawedAt)
	}
}

// waitForNewerStatus waits until container id's workload has written its
// status file after t0.
func waitForNewerStatus(t *testing.T, d *harness.Daemon, id string, t0 time.Time) {
	t.Helper()
	waitFor(t, "a status written after the thaw", func() bool {
		s, err := workload.ReadStatus(filepath.Join(d.RootfsPath(id), "status.json"))
		return err == nil && s.WrittenAt.After(t0)
	})
}

// pinCopyPrefix names the shim's pin copies beside the upper dirs
// (snapshotter/pin's BindMount).
const pinCopyPrefix = "precopy-pin-"

// pinMounts are the mounts under the daemon's dir whose source is a pin's
// copy.
func pinMounts(t *testing.T, d *harness.Daemon) []*mountinfo.Info {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(d.Dir))
	if err != nil {
		t.Fatal(err)
	}
	var pins []*mountinfo.Info
	for _, m := range mounts {
		if strings.Contains(m.Root, pinCopyPrefix) {
			pins = append(pins, m)
		}
	}
	return pins
}

// requireNoPins fails t if a pin's mount or copy is left under the
// daemon's dir.
func requireNoPins(t *testing.T, d *harness.Daemon) {
	t.Helper()
	for _, m := range pinMounts(t, d) {
		t.Errorf("pin left mounted: %s on %s", m.Root, m.Mountpoint)
	}
	copies, err := filepath.Glob(filepath.Join(d.Dir, "root", "io.containerd.snapshotter.v1.overlayfs", "snapshots", "*", pinCopyPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range copies {
		t.Errorf("pin copy left: %s", c)
	}
}

// shimPid is the pid of the shim serving task: the parent of the
// container's init process (the shim is its subreaper).
func shimPid(t *testing.T, task containerd.Task) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", task.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	// The command is in parentheses and may hold spaces: the fields
	// after it start at the last ')'.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	var ppid int
	if _, err := fmt.Sscan(fields[1], &ppid); err != nil {
		t.Fatal(err)
	}
	return ppid
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCRIEarlyThawOverlay checkpoints a pod's container with a writable
// rootfs on containerd's overlayfs through the CRI API (the kubelet's
// checkpoint), on both install paths: the shim pins the writable layer
// and thaws the container right after the final dump; the archive's
// rootfs diff, which the CRI plugin takes after the task's checkpoint,
// holds the status file from before the thaw; the container runs on with
// its memory intact.
func TestCRIEarlyThawOverlay(t *testing.T) {
	for _, handler := range []string{handlerRuncPath, handlerPrecopy} {
		t.Run(handler, func(t *testing.T) {
			d, cri := startCRIDaemon(t)
			ctx := testContext(t, d)
			a := criAnnotations{container: lowMinSize}
			if handler == handlerPrecopy {
				a = criAnnotations{pod: lowMinSize}
			}
			pod := runCRIMemload(t, ctx, d, cri, "overlay-"+handler, handler, a, append(lowDirtyArgs, "-status-every", "20ms")...)
			archive := filepath.Join(t.TempDir(), "checkpoint.tar")
			report := checkpointCRIRunning(t, ctx, cri, pod.ContainerID, archive, handler == handlerRuncPath)
			requireShimPin(t, report)
			ar, err := harness.ReadArchive(archive)
			if err != nil {
				t.Fatal(err)
			}
			b, err := ar.RootfsDiffFile("status.json")
			if err != nil {
				t.Fatal(err)
			}
			st, err := workload.ParseStatus(b)
			if err != nil {
				t.Fatal(err)
			}
			if !st.WrittenAt.Before(report.Thaw.ThawedAt) {
				t.Errorf("the rootfs diff's status.json was written at %v, after the thaw at %v: the diff did not see the pinned layer", st.WrittenAt, report.Thaw.ThawedAt)
			}
			requireNoPins(t, d)
		})
	}
}
