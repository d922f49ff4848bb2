package integration

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	precopyshim "github.com/precopy/precopy/shim"
)

// TestLifecycleClient drives a container on precopy's runtime through the
// Go client: run, exec, pause/resume, stats, kill, delete.
func TestLifecycleClient(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemload(t, d, "lifecycle-client", precopyshim.Runtime)
	requireShim(t, ctx, task, stack.bins.Path(harness.ShimBinary))

	st := queryMemload(t, ctx, task)
	if err := st.Check(); err != nil {
		t.Fatalf("fresh workload: %v", err)
	}

	if err := task.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	requireStatus(t, ctx, task, containerd.Paused)
	paused, _ := readStatusFile(d, task)
	time.Sleep(300 * time.Millisecond)
	if again, _ := readStatusFile(d, task); again.Counter != paused.Counter {
		t.Errorf("workload ran while paused: counter %d -> %d", paused.Counter, again.Counter)
	}
	if err := task.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	requireStatus(t, ctx, task, containerd.Running)
	if after := queryMemload(t, ctx, task); after.Counter <= st.Counter {
		t.Errorf("counter did not advance after resume: %d -> %d", st.Counter, after.Counter)
	}

	metrics, err := task.Metrics(ctx)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if metrics.Data == nil || len(metrics.Data.GetValue()) == 0 {
		t.Error("stats returned no data")
	}

	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGTERM); err != nil {
		t.Fatalf("kill: %v", err)
	}
	select {
	case <-exitC:
	case <-time.After(time.Minute):
		t.Fatal("task did not exit after SIGTERM")
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatalf("delete task: %v", err)
	}
}

// TestLifecycleCtr drives the same through ctr, as an operator would.
func TestLifecycleCtr(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	const id = "lifecycle-ctr"
	t.Cleanup(func() { removeContainer(t, d, id) })
	ctr := func(args ...string) string {
		t.Helper()
		out, err := d.Ctr(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	ctr("run", "-d", "--runtime", precopyshim.Runtime, harness.MemloadImage, id, "/"+harness.MemloadBinary, "-mib", "16")
	requireCtrStatus(t, ctx, d, id, "RUNNING")

	out := ""
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		// The first query can race the workload's start-up fill.
		var err error
		out, err = d.Ctr(ctx, "task", "exec", "--exec-id", "q", id, "/"+harness.MemloadBinary, "query")
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	st, err := workload.ParseStatus([]byte(out))
	if err == nil {
		err = st.Check()
	}
	if err != nil {
		t.Fatalf("ctr task exec memload query: %v: %q", err, out)
	}

	ctr("task", "pause", id)
	requireCtrStatus(t, ctx, d, id, "PAUSED")
	ctr("task", "resume", id)
	requireCtrStatus(t, ctx, d, id, "RUNNING")
	if out := ctr("task", "metrics", id); !strings.Contains(out, "memory") {
		t.Errorf("ctr task metrics shows no memory figures: %q", out)
	}
	ctr("task", "kill", "--signal", "SIGKILL", id)
	requireCtrStatus(t, ctx, d, id, "STOPPED")
	ctr("task", "delete", id)
	ctr("container", "delete", id)
	if out := ctr("container", "ls", "-q"); strings.Contains(out, id) {
		t.Errorf("container still listed after delete: %q", out)
	}
}

func requireStatus(t *testing.T, ctx context.Context, task containerd.Task, want containerd.ProcessStatus) {
	t.Helper()
	st, err := task.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != want {
		t.Fatalf("task %s is %s, want %s", task.ID(), st.Status, want)
	}
}

// requireCtrStatus waits until `ctr task ls` shows task id in status want.
func requireCtrStatus(t *testing.T, ctx context.Context, d *harness.Daemon, id, want string) {
	t.Helper()
	var out string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var err error
		if out, err = d.Ctr(ctx, "task", "ls"); err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == id && f[2] == want {
				return
			}
		}
	}
	t.Fatalf("ctr task ls never showed %s %s: %q", id, want, out)
}
