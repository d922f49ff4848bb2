package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/precopy/precopy/integration/harness"
	precopyshim "github.com/precopy/precopy/shim"
)

// The fault matrix of issue 18: each test breaks one thing a checkpoint
// depends on and checks that the container ends as the client asked
// (running, paused or stopped), its memory intact where it runs on, that
// nothing of the checkpoint is left behind (rounds, CRIU processes, CRIU's
// network lock, pins), and that the error says what happened. In the VM
// tier the Pause pre-copies; natively it cannot, and the same faults hit
// a one-shot checkpoint.

// ourCRIUPids are the `criu swrk` processes working for daemon d: CRIU,
// runc or the shim above them names d's dir or namespace, or CRIU holds a
// file under d's dir. Other tests' (or other checkouts') CRIUs are not.
func ourCRIUPids(d *harness.Daemon) []int {
	var ours []int
	for _, pid := range criuPids() {
		if holdsFileUnder(pid, d.Dir) {
			ours = append(ours, pid)
			continue
		}
		for p, i := pid, 0; p > 1 && i < 8; p, i = parentPid(p), i+1 {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
			if strings.Contains(string(cmdline), d.Dir) || strings.Contains(string(cmdline), d.Namespace) {
				ours = append(ours, pid)
				break
			}
		}
	}
	return ours
}

// parentPid is the parent of process pid (0 when it is gone).
func parentPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// requireNothingLeft checks what no fault may leave of a checkpoint of
// task on d: the shim's rounds in its bundle, a CRIU working for d, and
// (while the task runs) CRIU's network lock in its network namespace.
func requireNothingLeft(t *testing.T, ctx context.Context, d *harness.Daemon, task containerd.Task) {
	t.Helper()
	if _, err := os.Stat(roundsDir(d, task.ID())); !os.IsNotExist(err) {
		t.Errorf("pre-copy rounds left in the bundle: %v", err)
	}
	waitForExplained(t, "this daemon's CRIU to exit", func() bool { return len(ourCRIUPids(d)) == 0 }, func() string {
		var b strings.Builder
		for _, pid := range ourCRIUPids(d) {
			fmt.Fprintf(&b, "\n%s", describeProcess(pid))
		}
		return b.String()
	})
	if st, err := task.Status(ctx); err == nil && (st.Status == containerd.Running || st.Status == containerd.Paused) {
		locks, err := harness.CRIUNetworkLocks(int(task.Pid()))
		if err != nil {
			t.Errorf("CRIU's network lock: %v", err)
		} else if len(locks) > 0 {
			t.Errorf("CRIU's network lock left in the container's network namespace: nftables tables %v: it is cut off", locks)
		}
	}
}

// checkpointAsync runs a checkpoint in the background; the channel gets
// its error.
func checkpointAsync(ctx context.Context, d *harness.Daemon, id, ref string, opts ...containerd.CheckpointOpts) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctr, err := d.Client().LoadContainer(ctx, id)
		if err == nil {
			_, err = ctr.Checkpoint(ctx, ref, opts...)
		}
		done <- err
	}()
	return done
}

// startFaultDaemon starts a containerd of the test's own, with o's
// options besides the stack's (shim dirs, namespace, CRIU's environment),
// and the workload's image; it is torn down when t ends.
func startFaultDaemon(t *testing.T, name string, o harness.Options) *harness.Daemon {
	t.Helper()
	requireStack(t)
	ctx := context.Background()
	o.ShimDirs = []string{stack.bins.Dir}
	o.Namespace = stack.daemon.Namespace + "-" + name
	o.Env = append(o.Env, stack.criuEnv...)
	d, err := harness.StartDaemon(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("containerd teardown: %v", err)
		}
	})
	if err := harness.ImportMemload(d.Context(ctx), d.Client(), stack.bins); err != nil {
		t.Fatal(err)
	}
	return d
}

// gateFinalDump holds the first open of a pages file in a checkpoint
// image under d's temp dir (which must be a tmpfs of its own:
// Options.TempTmpfs): the final dump's CRIU has then frozen and seized
// the container, locked its network and is writing its memory. Pre-dump
// rounds write into the bundle, not there.
func gateFinalDump(t *testing.T, d *harness.Daemon) *harness.OpenGate {
	t.Helper()
	first := true
	g, err := harness.NewOpenGate(filepath.Join(d.Dir, "tmp"), func(path string) bool {
		if first && strings.Contains(path, "/ctrd-checkpoint") && strings.HasPrefix(filepath.Base(path), "pages-") {
			first = false
			return true
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// killFinalDump checkpoints task the way ctr does (State, Pause,
// Checkpoint, Resume), with the checkpoint options given, and SIGKILLs the
// final dump's CRIU as it opens its pages file (gateFinalDump), the
// network locked and the task seized. It returns the checkpoint's error.
func killFinalDump(t *testing.T, ctx context.Context, d *harness.Daemon, task containerd.Task, ref string, opts ...containerd.CheckpointOpts) error {
	t.Helper()
	gate := gateFinalDump(t, d)
	if _, err := task.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if err := task.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	done := checkpointAsync(ctx, d, task.ID(), ref, opts...)
	var cerr error
	select {
	case h := <-gate.Held():
		locks, err := harness.CRIUNetworkLocks(int(task.Pid()))
		t.Logf("CRIU %d opening %s: network locks %v (%v), task traced by %d", h.Pid, h.Path, locks, err, tracerPid(int(task.Pid())))
		if err := syscall.Kill(h.Pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill CRIU %d: %v", h.Pid, err)
		}
		h.Release()
		cerr = <-done
	case cerr = <-done:
		t.Fatalf("the checkpoint returned (%v) before its final dump opened a pages file", cerr)
	case <-gate.Done():
		t.Fatalf("open gate: %v", gate.Err())
	}
	// As ctr does, whatever the checkpoint's outcome.
	if err := task.Resume(ctx); err != nil {
		t.Logf("resume: %v", err)
	}
	return cerr
}

// TestFinalDumpCRIUKilled kills CRIU in the middle of a leave-running
// final dump, once it has frozen the container and locked its network. In
// the VM the dump is on the Pause's rounds and is redone one-shot (the
// container is still paused), so the checkpoint succeeds and the report
// says why it fell back; natively the one-shot dump was the only one and
// the checkpoint fails saying CRIU failed. Either way the container runs
// on after the client's Resume with its memory intact, its network
// unlocked, and no rounds or CRIU left.
func TestFinalDumpCRIUKilled(t *testing.T) {
	d := startFaultDaemon(t, "final-killed", harness.Options{TempTmpfs: 1 << 30})
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "final-killed", precopyshim.Runtime, preCopiedArgs...)
	before := queryMemload(t, ctx, task)

	const ref = "precopy.test/checkpoint:final-killed"
	err := killFinalDump(t, ctx, d, task, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW, containerd.WithCheckpointTask)
	if stack.softDirty {
		if err != nil {
			t.Fatalf("checkpoint on rounds whose final dump's CRIU died: %v; want it redone one-shot", err)
		}
		report := requireFlatCheckpoint(t, ctx, d, ref)
		if report.PreCopied && !strings.Contains(report.FellBack, "final dump") {
			t.Errorf("report does not say the final dump on the rounds failed: %+v", report)
		}
		t.Logf("fell back: %q (pre-copied %v, skipped %q)", report.FellBack, report.PreCopied, report.Skipped)
		removeContainer(t, d, "final-killed-dst")
		restored := restoreCtr(t, ctx, d, "final-killed-dst", ref)
		checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
		removeContainer(t, d, restored.ID())
	} else if err == nil || !strings.Contains(err.Error(), "criu") {
		t.Errorf("checkpoint whose CRIU was killed: %v; want an error saying CRIU failed", err)
	} else {
		t.Logf("checkpoint failed as it should: %v", err)
	}
	requireStatus(t, ctx, task, containerd.Running)
	after := queryMemload(t, ctx, task)
	if err := after.Check(); err != nil {
		t.Error(err)
	}
	if after.Counter <= before.Counter {
		t.Errorf("workload counter %d did not go on from %d", after.Counter, before.Counter)
	}
	requireNothingLeft(t, ctx, d, task)
}

// TestFinalDumpCRIUKilledExit is TestFinalDumpCRIUKilled for a checkpoint
// that stops the container (exit mode, nerdctl's default): a dump that
// stops the container cannot be taken twice, so the checkpoint fails in
// both tiers, saying the dump failed; runc stops the container only after
// a dump that succeeded, so it runs on after the client's Resume, thawed,
// its memory intact and its network unlocked.
func TestFinalDumpCRIUKilledExit(t *testing.T) {
	d := startFaultDaemon(t, "final-killed-exit", harness.Options{TempTmpfs: 1 << 30})
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "final-killed-exit", precopyshim.Runtime, preCopiedArgs...)
	before := queryMemload(t, ctx, task)

	const ref = "precopy.test/checkpoint:final-killed-exit"
	err := killFinalDump(t, ctx, d, task, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW, containerd.WithCheckpointTaskExit, containerd.WithCheckpointTask)
	if err == nil || !strings.Contains(err.Error(), "criu") {
		t.Errorf("exit-mode checkpoint whose CRIU was killed: %v; want an error saying CRIU failed", err)
	} else {
		t.Logf("checkpoint failed as it should: %v", err)
	}
	if stack.softDirty && err != nil && !strings.Contains(err.Error(), "not redone") {
		t.Errorf("exit-mode failure on rounds does not say it was not redone: %v", err)
	}
	if _, err := d.Client().GetImage(ctx, ref); err == nil {
		t.Errorf("a failed checkpoint left image %s", ref)
	}
	requireStatus(t, ctx, task, containerd.Running)
	after := queryMemload(t, ctx, task)
	if err := after.Check(); err != nil {
		t.Error(err)
	}
	if after.Counter <= before.Counter {
		t.Errorf("workload counter %d did not go on from %d", after.Counter, before.Counter)
	}
	requireNothingLeft(t, ctx, d, task)
}
