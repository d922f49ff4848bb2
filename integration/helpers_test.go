package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	precopyshim "github.com/precopy/precopy/shim"
)

// testContext is a context in the daemon's namespace that ends with t.
func testContext(t *testing.T, d *harness.Daemon) context.Context {
	ctx, cancel := context.WithTimeout(d.Context(context.Background()), 10*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// memloadArgs are the workload's arguments for the tests: enough memory
// and dirtying that a lost or stale page shows, small enough for the VM.
var memloadArgs = []string{"-mib", "32", "-dirty-mibps", "8", "-hot", "0.25"}

// runMemload starts the memory workload in a new container on runtime
// and removes both when t ends. Its stdio are FIFOs to the test's stderr,
// which CRIU can dump (a host file would not be).
func runMemload(t *testing.T, d *harness.Daemon, id, runtime string) containerd.Task {
	t.Helper()
	return runMemloadWith(t, d, id, runtime, memloadArgs...)
}

// runMemloadWith is runMemload with the workload's arguments given.
func runMemloadWith(t *testing.T, d *harness.Daemon, id, runtime string, args ...string) containerd.Task {
	t.Helper()
	return runMemloadAnnotated(t, d, id, runtime, nil, args...)
}

// runMemloadAnnotated is runMemloadWith with OCI annotations on the
// container (precopy's io.precopy.* settings).
func runMemloadAnnotated(t *testing.T, d *harness.Daemon, id, runtime string, annotations map[string]string, args ...string) containerd.Task {
	t.Helper()
	task, err := newMemloadTask(t, d, id, runtime, []oci.SpecOpts{oci.WithAnnotations(annotations)}, args...)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(testContext(t, d)); err != nil {
		t.Fatalf("start task %s: %v", id, err)
	}
	waitMemloadReady(t, d, task)
	return task
}

// newMemloadTask creates (not starts) the workload's container, its spec
// changed by specOpts, and its task; the container is removed when t ends.
// Its error is the task's creation's.
func newMemloadTask(t *testing.T, d *harness.Daemon, id, runtime string, specOpts []oci.SpecOpts, args ...string) (containerd.Task, error) {
	t.Helper()
	return newMemloadTaskOn(t, d, id, runtime, specOpts, cio.NewCreator(cio.WithStreams(nil, os.Stderr, os.Stderr)), args...)
}

// newMemloadTaskIO is newMemloadTask on precopy's runtime with the task's
// IO made by ioCreator (a terminal, say).
func newMemloadTaskIO(t *testing.T, d *harness.Daemon, id string, specOpts []oci.SpecOpts, ioCreator cio.Creator, args ...string) (containerd.Task, error) {
	t.Helper()
	return newMemloadTaskOn(t, d, id, precopyshim.Runtime, specOpts, ioCreator, args...)
}

func newMemloadTaskOn(t *testing.T, d *harness.Daemon, id, runtime string, specOpts []oci.SpecOpts, ioCreator cio.Creator, args ...string) (containerd.Task, error) {
	t.Helper()
	ctx := testContext(t, d)
	c := d.Client()
	image, err := c.GetImage(ctx, harness.MemloadImage)
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := c.NewContainer(ctx, id,
		containerd.WithNewSnapshot(id, image),
		containerd.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(image),
			oci.WithProcessArgs(append([]string{"/" + harness.MemloadBinary}, args...)...)}, specOpts...)...),
		containerd.WithRuntime(runtime, nil))
	if err != nil {
		t.Fatalf("create container %s on %s: %v", id, runtime, err)
	}
	t.Cleanup(func() { removeContainer(t, d, id) })
	return ctr.NewTask(ctx, ioCreator)
}

// waitMemloadReady waits until the workload has filled its memory and
// written its first status.
func waitMemloadReady(t *testing.T, d *harness.Daemon, task containerd.Task) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := readStatusFile(d, task)
		if err == nil && st.Counter > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("memload in %s never reported: %v", task.ID(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readStatusFile reads the workload's status file through the task's
// rootfs mount in containerd's state dir.
func readStatusFile(d *harness.Daemon, task containerd.Task) (workload.Status, error) {
	return workload.ReadStatus(filepath.Join(d.RootfsPath(task.ID()), "status.json"))
}

// removeContainer kills and deletes container id if it is still there.
func removeContainer(t *testing.T, d *harness.Daemon, id string) {
	ctx, cancel := context.WithTimeout(d.Context(context.Background()), time.Minute)
	defer cancel()
	if err := d.RemoveContainer(ctx, id); err != nil {
		t.Errorf("cleanup %s: %v", id, err)
	}
}

// queryMemload asks the workload, through an exec of `memload query` in
// its container, to verify its memory and report.
func queryMemload(t *testing.T, ctx context.Context, task containerd.Task) workload.Status {
	t.Helper()
	spec, err := task.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pspec := *spec.Process
	pspec.Args = []string{"/" + harness.MemloadBinary, "query"}
	var stdout, stderr bytes.Buffer
	execID := fmt.Sprintf("query-%d", time.Now().UnixNano())
	p, err := task.Exec(ctx, execID, &pspec, cio.NewCreator(cio.WithStreams(nil, &stdout, &stderr)))
	if err != nil {
		t.Fatalf("exec memload query in %s: %v", task.ID(), err)
	}
	defer p.Delete(ctx)
	statusC, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("start memload query in %s: %v", task.ID(), err)
	}
	status := <-statusC
	if code, _, _ := status.Result(); code != 0 {
		t.Fatalf("memload query in %s exited %d: %s", task.ID(), code, stderr.String())
	}
	// Wait returns at the process exit; the FIFO may still be draining,
	// and Delete cancels the copy before it waits for it (containerd's
	// client), losing what it had not read yet: wait for the copy to end
	// (the shim closes the FIFO after the process's last write) first.
	copied := make(chan struct{})
	go func() { p.IO().Wait(); close(copied) }()
	select {
	case <-copied:
	case <-time.After(time.Minute):
		t.Errorf("the output of memload query in %s was still being copied a minute after it exited", task.ID())
	}
	p.Delete(ctx)
	st, err := workload.ParseStatus(stdout.Bytes())
	if err != nil {
		t.Fatalf("memload query in %s: %v: %q", task.ID(), err, stdout.String())
	}
	return st
}

// checkMemoryContinued asserts that restored is the same process image as
// before, restored with its memory intact: same start stamp, a counter that
// went on from where it was, every page as the workload last wrote it, and a
// checksum equal to the one this test computes from scratch for the
// restored cursor.
func checkMemoryContinued(t *testing.T, before, restored workload.Status) {
	t.Helper()
	if restored.StartedAt != before.StartedAt {
		t.Errorf("restored workload started at %v, the checkpointed one at %v: not the same process image", restored.StartedAt, before.StartedAt)
	}
	if restored.Counter <= before.Counter {
		t.Errorf("restored counter %d did not continue from %d", restored.Counter, before.Counter)
	}
	if err := restored.Check(); err != nil {
		t.Errorf("restored memory failed its own verification: %v", err)
	}
	// The workload rewrites a status file in its rootfs and remembers, in
	// memory, which one it wrote last: a restored rw layer from another
	// moment than the memory image shows here.
	if restored.FileMismatches != 0 {
		t.Errorf("restored rootfs does not match the restored memory: %s (%d mismatches)", restored.FirstFileMismatch, restored.FileMismatches)
	}
	if want := expectedChecksum(t, restored); restored.Checksum != want {
		t.Errorf("restored memory checksum %s, want %s for cursor %d", restored.Checksum, want, restored.QueryCursor)
	}
}

// expectedChecksum computes, in this process, the checksum memory must
// have at the cursor a query reported: its content is a function of the
// seed and the cursor alone.
func expectedChecksum(t *testing.T, st workload.Status) string {
	t.Helper()
	m, err := workload.NewMemory(make([]byte, st.Pages*workload.PageSize), st.Seed, st.Hot)
	if err != nil {
		t.Fatal(err)
	}
	m.SetCursor(st.QueryCursor)
	m.Fill()
	return fmt.Sprintf("%08x", m.Checksum())
}

// shimExe is the binary of the shim serving task: the parent of the
// container's init process (the shim is its subreaper).
func shimExe(t *testing.T, ctx context.Context, task containerd.Task) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", task.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ppid ...
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	exe, err := os.Readlink("/proc/" + fields[1] + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

func requireShim(t *testing.T, ctx context.Context, task containerd.Task, want string) {
	t.Helper()
	if got := shimExe(t, ctx, task); got != want {
		t.Fatalf("task %s is served by %s, want %s", task.ID(), got, want)
	}
}
