package integration

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/testimage"
	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/plugin/memstore"
	precopyshim "github.com/precopy/precopy/shim"
)

// memoryStack is a private containerd whose content store, and snapshotter
// if asked for, are a precopyd's, the way README's config snippet sets it
// up: precopyd as proxy plugins, containerd's local content store off.
type memoryStack struct {
	precopyd *harness.Precopyd
	daemon   *harness.Daemon
}

// startMemoryStack starts a precopyd and a containerd using it, both torn
// down when t ends, and imports the workload's image. snapshotter, if
// set, becomes the namespace's default snapshotter, so the image is
// unpacked into it and containers, checkpoints and restores use it.
func startMemoryStack(t *testing.T, name string, o harness.PrecopydOptions, snapshotter string) *memoryStack {
	t.Helper()
	return startMemoryStackWith(t, name, o, snapshotter, false)
}

// startMemoryStackWith is startMemoryStack; with pins, precopy's shims of
// that containerd are configured (PRECOPY_CONFIG) to ask the precopyd to
// pin writable layers for early thaws.
func startMemoryStackWith(t *testing.T, name string, o harness.PrecopydOptions, snapshotter string, pins bool) *memoryStack {
	t.Helper()
	requireStack(t)
	ctx := context.Background()
	p, err := harness.StartPrecopyd(ctx, stack.bins, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("precopyd teardown: %v", err)
		}
	})
	opts, err := p.DaemonOptions(harness.Options{
		ShimDirs:  []string{stack.bins.Dir},
		Namespace: stack.daemon.Namespace + "-" + name,
		Env:       stack.criuEnv,
	}, pins)
	if err != nil {
		t.Fatal(err)
	}
	d, err := harness.StartDaemon(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Before precopyd's: containerd removes its containers' snapshots.
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("containerd teardown: %v", err)
		}
	})
	if snapshotter != "" {
		if err := harness.UsePrecopydSnapshotter(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := harness.ImportMemload(d.Context(ctx), d.Client(), stack.bins); err != nil {
		t.Fatalf("%v; precopyd's log:\n%s", err, p.Log())
	}
	return &memoryStack{precopyd: p, daemon: d}
}

func (ms *memoryStack) metrics(t *testing.T) harness.PrecopydMetrics {
	t.Helper()
	m, err := ms.precopyd.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestMemoryStoreCheckpointRestore runs the workload with its rootfs on
// precopyd's snapshotter, checkpoints it with `ctr c checkpoint --task
// --rw` into precopyd's content store, restores it with `ctr c restore
// --live --rw`, and checks the restored memory; nothing of it goes
// through containerd's disk-backed stores.
func TestMemoryStoreCheckpointRestore(t *testing.T) {
	ms := startMemoryStack(t, "memstore", harness.PrecopydOptions{ContentLimit: 1 << 30, SnapshotLimit: 512 << 20}, harness.PrecopydSnapshotter)
	d := ms.daemon
	ctx := testContext(t, d)
	src := runMemload(t, d, "mem-src", precopyshim.Runtime)
	requireSnapshotter(t, ctx, d, src.ID(), harness.PrecopydSnapshotter)
	if m := ms.metrics(t); m.Snapshots == nil || m.Snapshots.Snapshots < 2 || m.Snapshots.UsedBytes == 0 {
		t.Fatalf("image and container not on precopyd's snapshotter: %+v", m.Snapshots)
	}
	before := queryMemload(t, ctx, src)

	const ref = "precopy.test/checkpoint:memstore"
	blobsBefore := ms.metrics(t).Content.Blobs
	checkpointCtr(t, ctx, d, src.ID(), ref)
	checkMemoryContinued(t, before, queryMemload(t, ctx, src))
	if m := ms.metrics(t); m.Content.Blobs < blobsBefore+3 { // CRIU tar, spec, rw diff, index
		t.Errorf("checkpoint added %d blobs to precopyd's store", m.Content.Blobs-blobsBefore)
	}
	cp, err := harness.ReadCheckpoint(ctx, d.Client(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(cp.Entries) == 0 {
		t.Fatal("empty CRIU tar")
	}
	removeContainer(t, d, src.ID())

	restored := restoreCtr(t, ctx, d, "mem-dst", ref)
	requireSnapshotter(t, ctx, d, restored.ID(), harness.PrecopydSnapshotter)
	checkMemoryContinued(t, before, queryMemload(t, ctx, restored))

	// containerd's own stores stayed empty: its local content store is
	// off, and nothing was unpacked into its overlayfs snapshotter.
	for _, dir := range []string{"io.containerd.content.v1.content", "io.containerd.snapshotter.v1.overlayfs/snapshots"} {
		entries, err := os.ReadDir(filepath.Join(d.Dir, "root", dir))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		if len(entries) > 0 {
			t.Errorf("containerd's %s holds %d entries", dir, len(entries))
		}
	}
}

// contentInfos lists the content containerd has, as `ctr content ls`.
func contentInfos(t *testing.T, ctx context.Context, d *harness.Daemon) map[digest.Digest]content.Info {
	t.Helper()
	infos := map[digest.Digest]content.Info{}
	if err := d.Client().ContentStore().Walk(ctx, func(info content.Info) error {
		infos[info.Digest] = info
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return infos
}

// TestMemoryStoreCtr does what an operator does with ctr alone, on
// containerd with precopyd: import an image into precopyd's snapshotter,
// run a container on it, checkpoint it with its rw layer, and restore it.
func TestMemoryStoreCtr(t *testing.T) {
	ms := startMemoryStack(t, "memctr", harness.PrecopydOptions{ContentLimit: 1 << 30, SnapshotLimit: 512 << 20}, "")
	d := ms.daemon
	ctx := testContext(t, d)
	const image = "docker.io/precopy/memload:ctr"
	tar := filepath.Join(t.TempDir(), "memload.tar")
	if err := testimage.WriteFile(tar, testimage.Spec{
		Name:       image,
		Files:      []testimage.File{testimage.Executable("/"+harness.MemloadBinary, stack.bins.Path(harness.MemloadBinary))},
		Entrypoint: []string{"/" + harness.MemloadBinary},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Ctr(ctx, "images", "import", "--snapshotter", harness.PrecopydSnapshotter, tar); err != nil {
		t.Fatal(err)
	}
	const id = "mem-ctr-src"
	t.Cleanup(func() { removeContainer(t, d, id) })
	args := append([]string{"run", "-d", "--snapshotter", harness.PrecopydSnapshotter, "--runtime", precopyshim.Runtime, "--", image, id, "/" + harness.MemloadBinary}, memloadArgs...)
	if _, err := d.Ctr(ctx, args...); err != nil {
		t.Fatal(err)
	}
	src := loadTask(t, ctx, d, id)
	requireSnapshotter(t, ctx, d, id, harness.PrecopydSnapshotter)
	waitMemloadReady(t, d, src)
	before := queryMemload(t, ctx, src)

	const ref = "precopy.test/checkpoint:ctr-memstore"
	checkpointCtr(t, ctx, d, id, ref)
	removeContainer(t, d, id)
	restored := restoreCtr(t, ctx, d, "mem-ctr-dst", ref)
	requireSnapshotter(t, ctx, d, restored.ID(), harness.PrecopydSnapshotter)
	checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
}

// requireSnapshotter checks that container id's rootfs is a snapshot of
// the named snapshotter.
func requireSnapshotter(t *testing.T, ctx context.Context, d *harness.Daemon, id, want string) {
	t.Helper()
	ctr, err := d.Client().LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	info, err := ctr.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Snapshotter != want {
		t.Fatalf("container %s on snapshotter %q, want %q", id, info.Snapshotter, want)
	}
}

// TestMemoryStoreContentLimit checkpoints into a precopyd whose content
// limit leaves room for the image but not the checkpoint: the checkpoint
// fails saying the store is full, the container runs on, resumed, with
// its memory intact, and no checkpoint image or part of one is left.
func TestMemoryStoreContentLimit(t *testing.T) {
	requireStack(t)
	fi, err := os.Stat(stack.bins.Path(harness.MemloadBinary))
	if err != nil {
		t.Fatal(err)
	}
	// The image is the workload's binary and some JSON; its 32 MiB of
	// memory alone exceed the rest.
	limit := fi.Size() + 8<<20
	ms := startMemoryStack(t, "memlimit", harness.PrecopydOptions{ContentLimit: limit, SnapshotLimit: 256 << 20}, harness.PrecopydSnapshotter)
	d := ms.daemon
	ctx := testContext(t, d)
	task := runMemload(t, d, "mem-full", precopyshim.Runtime)
	before := queryMemload(t, ctx, task)
	blobsBefore := contentInfos(t, ctx, d)
	usedBefore := ms.metrics(t).Content

	const ref = "precopy.test/checkpoint:too-big"
	_, err = d.Ctr(ctx, "containers", "checkpoint", "--task", "--rw", task.ID(), ref)
	if err == nil || !strings.Contains(err.Error(), "content store full") {
		t.Fatalf("checkpoint over the content limit: %v; want it refused saying the content store is full", err)
	}
	t.Logf("refused as it should be: %v", err)

	requireStatus(t, ctx, task, containerd.Running)
	checkMemoryContinued(t, before, queryMemload(t, ctx, task))

	if _, err := d.Client().GetImage(ctx, ref); !errdefs.IsNotFound(err) {
		t.Errorf("checkpoint image after a failed checkpoint: %v, want not found", err)
	}
	if out, err := d.Ctr(ctx, "images", "ls", "-q"); err != nil || strings.Contains(out, ref) {
		t.Errorf("ctr images ls: %q, %v", out, err)
	}
	// Whatever the failed checkpoint committed before running out of
	// room (its rw diff) is complete; what it did not finish must not
	// show as content.
	cs := d.Client().ContentStore()
	for dgst, info := range contentInfos(t, ctx, d) {
		if _, ok := blobsBefore[dgst]; ok {
			continue
		}
		t.Logf("content the failed checkpoint left: %s, %d bytes", dgst, info.Size)
		if _, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: dgst, Size: info.Size}); err != nil {
			t.Errorf("new content %s listed but unreadable: %v", dgst, err)
		}
		if info.Size > limit/2 {
			t.Errorf("new content %s of %d bytes: the CRIU tar cannot have fit", dgst, info.Size)
		}
	}
	if m := ms.metrics(t); m.Content.WritesRefused == 0 || m.Content.UsedBytes > limit {
		t.Errorf("precopyd metrics after refusing: %+v", m.Content)
	}
	// containerd does not abort the ingest it failed to write, nor delete
	// the rw diff it no longer needs; its garbage collector does, once
	// the checkpoint's lease is gone (asynchronously: right after the
	// failed checkpoint, `ctr content active` may still list the ingest).
	// Then precopyd holds what it held before and no ingest is active.
	waitContentFreed(t, ms, usedBefore)
	if out, err := d.Ctr(ctx, "content", "active"); err != nil || len(strings.Split(strings.TrimSpace(out), "\n")) > 1 {
		t.Errorf("ctr content active after a failed checkpoint: %v\n%s", err, out)
	}
}

// waitContentFreed waits until precopyd's content store holds what it held
// before: no ingest and the same committed bytes.
func waitContentFreed(t *testing.T, ms *memoryStack, before memstore.Metrics) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		m := ms.metrics(t).Content
		if m.Ingests == 0 && m.IngestBytes == 0 && m.CommittedBytes == before.CommittedBytes && m.Blobs == before.Blobs {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("precopyd still holds what a failed checkpoint wrote: %+v, before it %+v", m, before)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMemoryStoreRestart checkpoints, restarts precopyd under a running
// containerd, and restores: without a persist dir the checkpoint is gone,
// and precopyd says so when it starts and when asked for it; with one, it
// is recovered and restores with its memory intact. The workload runs on
// containerd's overlayfs here: precopyd's snapshots are memory only and
// do not outlive it (its log says that too).
func TestMemoryStoreRestart(t *testing.T) {
	t.Run("memory only", func(t *testing.T) {
		ms, _, ref := checkpointThenRestart(t, "memrestart", "")
		d := ms.daemon
		ctx := testContext(t, d)
		log := ms.precopyd.Log()
		for _, want := range []string{"the earlier precopyd held in memory only are lost", "snapshots of an earlier precopyd were in memory only and are lost"} {
			if !strings.Contains(log, want) {
				t.Errorf("precopyd's log after the restart does not say %q:\n%s", want, log)
			}
		}
		_, err := harness.ReadCheckpoint(ctx, d.Client(), ref)
		if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "lost when precopyd restarted") {
			t.Errorf("reading the lost checkpoint: %v; want not found saying it was lost", err)
		}
		t.Cleanup(func() { removeContainer(t, d, "restart-dst") })
		_, err = d.Ctr(ctx, "containers", "restore", "--live", "--rw", "restart-dst", ref)
		if err == nil || !strings.Contains(err.Error(), "lost when precopyd restarted") {
			t.Errorf("restoring the lost checkpoint: %v; want not found saying it was lost", err)
		}
		t.Logf("restore refused as it should be: %v", err)

		// The way back, as README says: remove the image, whose content
		// and precopy snapshots are gone, and import it again.
		if _, err := d.Ctr(ctx, "images", "rm", "--sync", harness.MemloadImage, ref); err != nil {
			t.Fatal(err)
		}
		if err := harness.ImportMemload(ctx, d.Client(), stack.bins); err != nil {
			t.Fatal(err)
		}
		img, err := d.Client().GetImage(ctx, harness.MemloadImage)
		if err != nil {
			t.Fatal(err)
		}
		if err := img.Unpack(ctx, harness.PrecopydSnapshotter); err != nil {
			t.Fatalf("unpacking into precopyd's snapshotter after its restart: %v", err)
		}
		if m := ms.metrics(t); m.Snapshots == nil || m.Snapshots.Snapshots == 0 {
			t.Errorf("nothing unpacked into precopyd's snapshotter: %+v", m.Snapshots)
		}
	})
	t.Run("persist dir", func(t *testing.T) {
		ms, before, ref := checkpointThenRestart(t, "memrecover", filepath.Join(t.TempDir(), "persist"))
		d := ms.daemon
		ctx := testContext(t, d)
		if log := ms.precopyd.Log(); !strings.Contains(log, "from the persist dir") || strings.Contains(log, "not yet written to the persist dir") {
			t.Errorf("precopyd's log after the restart does not say all was recovered:\n%s", log)
		}
		restored := restoreCtr(t, ctx, d, "restart-dst", ref)
		checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
		if m := ms.metrics(t); m.Persist == nil || m.Persist.Failures != 0 {
			t.Errorf("persist metrics %+v", m.Persist)
		}
	})
}

// checkpointThenRestart starts a memory stack (with a persist dir if
// given), checkpoints the workload on overlayfs, removes it, and restarts
// precopyd. It returns the workload's state before the checkpoint and the
// checkpoint's name.
func checkpointThenRestart(t *testing.T, name, persistDir string) (*memoryStack, workload.Status, string) {
	t.Helper()
	ms := startMemoryStack(t, name, harness.PrecopydOptions{SnapshotLimit: 256 << 20, PersistDir: persistDir}, "")
	d := ms.daemon
	ctx := testContext(t, d)
	// Also into precopyd's snapshotter, to see its restart report the
	// snapshots lost.
	img, err := d.Client().GetImage(ctx, harness.MemloadImage)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Unpack(ctx, harness.PrecopydSnapshotter); err != nil {
		t.Fatal(err)
	}
	src := runMemload(t, d, name+"-src", precopyshim.Runtime)
	before := queryMemload(t, ctx, src)
	ref := "precopy.test/checkpoint:" + name
	checkpointCtr(t, ctx, d, src.ID(), ref)
	removeContainer(t, d, src.ID())

	if err := ms.precopyd.Stop(); err != nil {
		t.Fatal(err)
	}
	if persistDir != "" {
		checkPersistModes(t, persistDir)
	}
	if err := ms.precopyd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitProxyReconnected(t, ctx, d, img.Target().Digest)
	return ms, before, ref
}

// waitProxyReconnected waits until containerd reaches the restarted
// precopyd: its proxy client retries with a back-off of up to 3 s and
// fails calls as unavailable meanwhile.
func waitProxyReconnected(t *testing.T, ctx context.Context, d *harness.Daemon, dgst digest.Digest) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := d.Client().ContentStore().Info(ctx, dgst)
		if err == nil || !errdefs.IsUnavailable(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not reach the restarted precopyd: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkPersistModes checks that the persist dir is root's only.
func checkPersistModes(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return nil
		}
		want := fs.FileMode(0o600)
		if e.IsDir() {
			want = fs.ModeDir | 0o700
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
		return nil
	})
}

// TestMemoryStoreSocketPermissions checks that only root can use
// precopyd's socket, by trying ctr on it as root and as nobody: the
// socket's directory (0700) keeps others out, and the socket (0600)
// alone does too, as when its directory is a shared one such as /run.
func TestMemoryStoreSocketPermissions(t *testing.T) {
	requireStack(t)
	ctx := testContext(t, stack.daemon)
	p, err := harness.StartPrecopyd(ctx, stack.bins, harness.PrecopydOptions{SnapshotLimit: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	sockDir := filepath.Dir(p.Socket)
	for path, want := range map[string]fs.FileMode{sockDir: fs.ModeDir | 0o700, p.Socket: fs.ModeSocket | 0o600} {
		if fi, err := os.Lstat(path); err != nil || fi.Mode() != want {
			t.Fatalf("%s: %v, %v; want mode %v", path, fi.Mode(), err, want)
		}
	}
	// Let others reach the socket's directory, so that only precopyd's
	// own modes stand in their way.
	if err := os.Chmod(p.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	for _, api := range [][]string{{"content", "ls"}, {"snapshots", "ls"}} {
		if out, err := ctrOn(ctx, p.Socket, 0, api...); err != nil {
			t.Errorf("ctr %s on precopyd's socket as root: %v: %s", api, err, out)
		}
		if out, err := ctrOn(ctx, p.Socket, nobody, api...); err == nil || !strings.Contains(out, "permission denied") {
			t.Errorf("ctr %s as nobody through a 0700 directory: %v: %s; want permission denied", api, err, out)
		}
	}
	if err := os.Chmod(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := ctrOn(ctx, p.Socket, nobody, "content", "ls"); err == nil || !strings.Contains(out, "permission denied") {
		t.Errorf("ctr as nobody on a 0600 socket: %v: %s; want permission denied", err, out)
	}
}

// ctrOn runs ctr against the socket as user uid and returns its output.
func ctrOn(ctx context.Context, socket string, uid uint32, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", socket, "--timeout", "10s"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	cmd.Env = append(os.Environ(), "HOME=/")
	out, err := cmd.CombinedOutput()
	return string(out), err
}
