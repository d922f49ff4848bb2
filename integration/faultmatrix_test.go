package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
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
// task on d: the shim's rounds in its bundle, a pin of its writable layer
// (mount or copy), a CRIU working for d, and (while the task runs) CRIU's
// network lock in its network namespace.
func requireNothingLeft(t *testing.T, ctx context.Context, d *harness.Daemon, task containerd.Task) {
	t.Helper()
	requireNoPins(t, d)
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
			t.Errorf("CRIU's network lock left in the container's network namespace: %v: it is cut off", locks)
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
// final dump, once it has frozen and seized the container and locked its
// network. CRIU thaws the cgroup once it has seized the tasks (and would
// freeze it again at its end), so the container the client paused runs
// from the kill on: in the VM the dump on the Pause's rounds is not redone
// one-shot, as that dump would be newer than the rw layer the client
// diffed at its pause; natively the one-shot dump was the only one.
// Either way the checkpoint fails saying so, the shim freezes the
// container again, the client's Resume thaws it, and it runs on with its
// memory intact, its network unlocked, and no rounds or CRIU left. CRIU
// locks the network with nftables as precopy has it do, or with its
// default iptables method (through iptables-nft) where an operator's
// CRIU_CONFIG_FILE keeps precopy's options out.
func TestFinalDumpCRIUKilled(t *testing.T) {
	t.Run("nftables", func(t *testing.T) { testFinalDumpCRIUKilled(t, "final-killed", nil) })
	t.Run("iptables", func(t *testing.T) {
		own := filepath.Join(t.TempDir(), "criu.conf")
		if err := os.WriteFile(own, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		testFinalDumpCRIUKilled(t, "final-killed-ipt", []string{"CRIU_CONFIG_FILE=" + own})
	})
}

func testFinalDumpCRIUKilled(t *testing.T, name string, env []string) {
	d := startFaultDaemon(t, name, harness.Options{TempTmpfs: 1 << 30, Env: env})
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, name, precopyshim.Runtime, preCopiedArgs...)
	before := queryMemload(t, ctx, task)

	ref := "precopy.test/checkpoint:" + name
	err := killFinalDump(t, ctx, d, task, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW, containerd.WithCheckpointTask)
	want := "criu"
	if stack.softDirty {
		want = "ran on: not redone"
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("checkpoint whose CRIU was killed: %v; want an error saying %q", err, want)
	} else {
		t.Logf("checkpoint failed as it should: %v", err)
	}
	requireRanOnAfterFailure(t, ctx, d, task, ref, before)
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
	requireRanOnAfterFailure(t, ctx, d, task, ref, before)
}

// requireRanOnAfterFailure checks what a checkpoint that failed must
// leave: no image ref, and task running on from before with its memory
// intact, nothing of the checkpoint left.
func requireRanOnAfterFailure(t *testing.T, ctx context.Context, d *harness.Daemon, task containerd.Task, ref string, before workload.Status) {
	t.Helper()
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

// TestConcurrentCheckpoints8 checkpoints 8 containers on one containerd at
// once, each with `ctr c checkpoint --task --rw` (Pause, Checkpoint,
// Resume): every checkpoint succeeds with a flat image and its report,
// every container runs on with its memory intact, nothing is left, and the
// images restore. In the VM every Pause pre-copies, 8 shims' rounds and
// CRIUs side by side.
func TestConcurrentCheckpoints8(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	const n = 8
	annotations := map[string]string{settings.AnnotationMinSize: "16MiB"}
	tasks := make([]containerd.Task, n)
	before := make([]workload.Status, n)
	for i := range tasks {
		tasks[i] = runMemloadAnnotated(t, d, fmt.Sprintf("many-%d", i), precopyshim.Runtime, annotations, "-mib", "48", "-dirty-mibps", "4", "-hot", "0.1")
		before[i] = queryMemload(t, ctx, tasks[i])
	}
	refs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, task := range tasks {
		refs[i] = fmt.Sprintf("precopy.test/checkpoint:many-%d", i)
		removeImageAtEnd(t, d, refs[i])
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = d.Ctr(ctx, "c", "checkpoint", "--task", "--rw", task.ID(), refs[i])
		}()
	}
	wg.Wait()
	preCopied := 0
	for i, task := range tasks {
		if errs[i] != nil {
			t.Errorf("checkpoint %s: %v", task.ID(), errs[i])
			continue
		}
		report := requireFlatCheckpoint(t, ctx, d, refs[i])
		if report.PreCopied {
			preCopied++
		}
		t.Logf("%s: pre-copied %v, %d rounds, skipped %q, fell back %q", task.ID(), report.PreCopied, len(report.Rounds), report.Skipped, report.FellBack)
		requireStatus(t, ctx, task, containerd.Running)
		after := queryMemload(t, ctx, task)
		if err := after.Check(); err != nil {
			t.Errorf("%s: %v", task.ID(), err)
		}
		if after.Counter <= before[i].Counter {
			t.Errorf("%s: workload counter %d did not go on from %d", task.ID(), after.Counter, before[i].Counter)
		}
		requireNothingLeft(t, ctx, d, task)
	}
	if stack.softDirty && preCopied == 0 {
		t.Error("no checkpoint of the 8 was pre-copied")
	}
	// Two of them restored, with their memory as it was checkpointed.
	for _, i := range []int{0, n - 1} {
		if errs[i] != nil {
			continue
		}
		removeContainer(t, d, tasks[i].ID())
		restored := restoreCtr(t, ctx, d, tasks[i].ID()+"-dst", refs[i])
		checkMemoryContinued(t, before[i], queryMemload(t, ctx, restored))
		removeContainer(t, d, restored.ID())
	}
}

// TestContainerdRestartBetweenPauseAndCheckpoint restarts containerd after
// the Pause of a checkpoint and sends the Checkpoint and the Resume
// through the restarted one: the shim, and the rounds it pre-copied in
// the VM, outlive the daemon, so the checkpoint is taken on them, flat and
// restorable, and the container runs on.
func TestContainerdRestartBetweenPauseAndCheckpoint(t *testing.T) {
	d := startFaultDaemon(t, "restart", harness.Options{})
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "restart-src", precopyshim.Runtime, preCopiedArgs...)
	before := queryMemload(t, ctx, task)
	if _, err := task.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if err := task.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// The task as the restarted containerd serves it.
	task = loadTask(t, ctx, d, task.ID())
	requireStatus(t, ctx, task, containerd.Paused)
	const ref = "precopy.test/checkpoint:restart"
	cerr := checkpointPaused(ctx, d, task.ID(), ref)
	if err := task.Resume(ctx); err != nil {
		t.Errorf("resume through the restarted containerd: %v", err)
	}
	if cerr != nil {
		t.Fatalf("checkpoint through the restarted containerd: %v; its log:\n%s", cerr, d.LogTail(30))
	}
	report := requireFlatCheckpoint(t, ctx, d, ref)
	t.Logf("pre-copied %v, %d rounds, skipped %q", report.PreCopied, len(report.Rounds), report.Skipped)
	if stack.softDirty && (!report.PreCopied || report.Trigger != "pause") {
		t.Errorf("the rounds of the Pause before the restart were not used: %+v", report)
	}
	requireStatus(t, ctx, task, containerd.Running)
	if err := queryMemload(t, ctx, task).Check(); err != nil {
		t.Error(err)
	}
	requireNothingLeft(t, ctx, d, task)
	removeContainer(t, d, task.ID())
	restored := restoreCtr(t, ctx, d, "restart-dst", ref)
	checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
}

// TestShimKilledDuringRounds SIGKILLs the shim of a container while its
// Pause pre-copies, the round's CRIU held as it opens its pages file (an
// OpenGate on the state dir's tmpfs). The Pause fails; containerd cleans
// up after the dead shim as after any (runc-v2's `delete`: the container
// is killed, its bundle removed), so the task is gone, and with it the
// rounds, its processes, its rootfs mount and any CRIU. Pre-copy rounds
// run only where the kernel tracks dirty memory (the VM tier).
func TestShimKilledDuringRounds(t *testing.T) {
	requireSoftDirty(t)
	d := startFaultDaemon(t, "shim-killed", harness.Options{StateTmpfs: 2 << 30})
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "shim-killed", precopyshim.Runtime, preCopiedArgs...)
	pid := int(task.Pid())
	shim := parentPid(pid)
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", shim)); exe != stack.bins.Path(harness.ShimBinary) {
		t.Fatalf("the parent of the task, %d, is %s, not precopy's shim", shim, exe)
	}
	first := true
	gate, err := harness.NewOpenGate(filepath.Join(d.Dir, "state"), func(path string) bool {
		if first && strings.Contains(path, "/precopy/rounds-") && strings.HasPrefix(filepath.Base(path), "pages-") {
			first = false
			return true
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gate.Close)
	// containerd publishes TaskDelete once its cleanup after the dead
	// shim (the shim binary's delete: runc delete --force, the rootfs
	// unmounted, the bundle removed) is over.
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	envelopes, errs := d.Client().EventService().Subscribe(ectx, `topic=="/tasks/delete"`)
	if _, err := task.Status(ctx); err != nil {
		t.Fatal(err)
	}
	paused := pauseAsync(ctx, task)
	select {
	case h := <-gate.Held():
		t.Logf("round's CRIU %d opening %s; killing the shim %d", h.Pid, h.Path, shim)
		if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		h.Release()
	case err := <-paused:
		t.Fatalf("the pause returned (%v) before a round opened its pages file", err)
	}
	err = <-paused
	if err == nil {
		t.Fatal("the pause of a container whose shim was killed succeeded")
	}
	t.Logf("pause: %v", err)
	for deleted := false; !deleted; {
		select {
		case e := <-envelopes:
			v, err := typeurl.UnmarshalAny(e.Event)
			deleted = err == nil && v.(*apievents.TaskDelete).ContainerID == task.ID()
		case err := <-errs:
			t.Fatalf("waiting for containerd's cleanup after the dead shim: %v", err)
		}
	}
	if _, err := task.Status(ctx); !errdefs.IsNotFound(err) {
		t.Errorf("the task of the dead shim: %v; want not found", err)
	}
	// Killed, and reaped, or a zombie for whoever inherited it.
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(st[strings.LastIndexByte(string(st), ')'):]), ") Z") {
		t.Errorf("the container's process %d is still running", pid)
	}
	if _, err := os.Stat(filepath.Dir(roundsDir(d, task.ID()))); !os.IsNotExist(err) {
		t.Errorf("the dead shim's bundle is left: %v", err)
	}
	requireNothingLeft(t, ctx, d, task)
	if mounted := mountsUnder(t, filepath.Join(d.Dir, "state", "io.containerd.runtime.v2.task")); len(mounted) > 0 {
		t.Errorf("mounts left in the dead shim's state: %v", mounted)
	}
	if t.Failed() {
		t.Logf("containerd log:\n%s", d.LogTail(40))
	}
}

// mountsUnder lists the mount points below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	return points
}

// TestTmpfsFullDuringRounds gives containerd a state dir (where the
// bundles, and the shim's rounds, are) on a tmpfs smaller than the
// workload's memory: in the VM the first round cannot be written, so the
// checkpoint is one-shot (its image goes to the temp dir, elsewhere), the
// report says the round failed and why, and nothing of the round is left.
// Natively there are no rounds, and a small state dir does not get in the
// way of a one-shot checkpoint either.
func TestTmpfsFullDuringRounds(t *testing.T) {
	d := startFaultDaemon(t, "state-full", harness.Options{StateTmpfs: 64 << 20})
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "state-full", precopyshim.Runtime, preCopiedArgs...) // 128 MiB
	before := queryMemload(t, ctx, task)
	const ref = "precopy.test/checkpoint:state-full"
	checkpointCtr(t, ctx, d, task.ID(), ref)
	report := requireFlatCheckpoint(t, ctx, d, ref)
	t.Logf("pre-copied %v, skipped %q", report.PreCopied, report.Skipped)
	if stack.softDirty && (report.PreCopied || !strings.Contains(report.Skipped, "pre-copy round 1") || !strings.Contains(strings.ToLower(report.Skipped), "no space left")) {
		t.Errorf("report does not say round 1 found no space: %+v", report)
	}
	requireStatus(t, ctx, task, containerd.Running)
	if err := queryMemload(t, ctx, task).Check(); err != nil {
		t.Error(err)
	}
	requireNothingLeft(t, ctx, d, task)
	removeContainer(t, d, task.ID())
	restored := restoreCtr(t, ctx, d, "state-full-dst", ref)
	checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
}

// TestTmpfsFullDuringFlatten gives containerd a temp dir (where a
// checkpoint's image is written before it is stored) on a tmpfs that holds
// the final dump's delta but not the whole memory. In the VM the final
// dump on the rounds fits, its flatten (a copy: the rounds are on another
// filesystem) does not, the dump redone one-shot does not either, and the
// checkpoint fails saying so; natively the one-shot dump does not fit.
// Either way the client's Resume leaves the container running with its
// memory intact, and nothing is left, in the temp dir either.
func TestTmpfsFullDuringFlatten(t *testing.T) {
	d := startFaultDaemon(t, "temp-full", harness.Options{TempTmpfs: 64 << 20})
	ctx := testContext(t, d)
	// 128 MiB, rewriting at most its hot tenth (13 MiB) between the last
	// round and the final dump.
	task := runMemloadWith(t, d, "temp-full", precopyshim.Runtime, preCopiedArgs...)
	before := queryMemload(t, ctx, task)
	const ref = "precopy.test/checkpoint:temp-full"
	_, err := d.Ctr(ctx, "c", "checkpoint", "--task", "--rw", task.ID(), ref)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "no space left") {
		t.Errorf("checkpoint into a full temp dir: %v; want an error saying there is no space", err)
	}
	if stack.softDirty && err != nil && !strings.Contains(err.Error(), "flatten") {
		t.Errorf("checkpoint error does not say the final flatten failed: %v", err)
	}
	t.Logf("checkpoint: %v", err)
	requireStatus(t, ctx, task, containerd.Running)
	after := queryMemload(t, ctx, task)
	if err := after.Check(); err != nil {
		t.Error(err)
	}
	if after.Counter <= before.Counter {
		t.Errorf("workload counter %d did not go on from %d", after.Counter, before.Counter)
	}
	requireNothingLeft(t, ctx, d, task)
	if entries, _ := os.ReadDir(filepath.Join(d.Dir, "tmp")); len(entries) != 0 {
		t.Errorf("the failed checkpoint left %d entries in the temp dir", len(entries))
	}
}

// TestPrecopydStoppedBetweenPauseAndCheckpoint stops precopyd (content
// store, snapshotter and pins) after a checkpoint's Pause of a container
// whose writable rootfs is on precopyd's snapshotter, with the shim
// configured to ask precopyd for a pin to thaw early. The checkpoint, into
// an image path (containerd's content store is precopyd's, and down),
// succeeds without the early thaw, its report saying why; the container
// runs on after the Resume; and once precopyd is back it holds no pin.
func TestPrecopydStoppedBetweenPauseAndCheckpoint(t *testing.T) {
	ms := startMemoryStackWith(t, "precopyd-stopped", harness.PrecopydOptions{ContentLimit: 1 << 30, SnapshotLimit: 512 << 20}, harness.PrecopydSnapshotter, true)
	d := ms.daemon
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "precopyd-stopped", precopyshim.Runtime, preCopiedArgs...)
	requireSnapshotter(t, ctx, d, task.ID(), harness.PrecopydSnapshotter)
	before := queryMemload(t, ctx, task)
	// As ctr does: look at the task, pause it.
	if _, err := task.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if err := task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ms.precopyd.Stop(); err != nil {
		t.Fatal(err)
	}
	// Straight to the task service: containerd's client (Task.Checkpoint
	// with WithCheckpointImagePath) stores an image all the same for any
	// runtime but io.containerd.runc.v2, diffing the rw layer on precopyd.
	image := filepath.Join(t.TempDir(), "image")
	opts, err := typeurl.MarshalAnyToProto(&options.CheckpointOptions{ImagePath: image})
	if err != nil {
		t.Fatal(err)
	}
	_, cerr := d.Client().TaskService().Checkpoint(ctx, &tasks.CheckpointTaskRequest{ContainerID: task.ID(), Options: opts})
	if err := task.Resume(ctx); err != nil {
		t.Errorf("resume with precopyd stopped: %v", err)
	}
	if cerr != nil {
		t.Fatalf("checkpoint with precopyd stopped: %v; containerd log:\n%s", cerr, d.LogTail(40))
	}
	report, err := precopy.ReadReport(image)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("thaw: %+v", report.Thaw)
	if report.Thaw == nil || report.Thaw.Early || report.Thaw.Pinned {
		t.Errorf("thawed early or pinned with precopyd stopped: %+v", report.Thaw)
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
	if err := ms.precopyd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if pins, _ := os.ReadDir(filepath.Join(ms.precopyd.StateDir, "snapshotter", "fs", "pins")); len(pins) != 0 {
		t.Errorf("%d pins held by the restarted precopyd", len(pins))
	}
	// The shim goes on: a Pause and Resume after precopyd came back.
	if err := task.Pause(ctx); err != nil {
		t.Errorf("pause after precopyd came back: %v", err)
	}
	if err := task.Resume(ctx); err != nil {
		t.Errorf("resume after precopyd came back: %v", err)
	}
	requireStatus(t, ctx, task, containerd.Running)
}

// removeImageAtEnd removes image ref from d when t ends, so that the test
// can run again on the same containerd (-count).
func removeImageAtEnd(t *testing.T, d *harness.Daemon, ref string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(d.Context(context.Background()), time.Minute)
		defer cancel()
		d.Client().ImageService().Delete(ctx, ref)
	})
}
