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

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/precopy/policy"
	"github.com/precopy/precopy/precopy/settings"
	precopyshim "github.com/precopy/precopy/shim"
)

// A workload pre-copy takes several seconds on in the VM: rounds are
// still running when the tests below interfere.
var preCopiedArgs = []string{"-mib", "128", "-dirty-mibps", "8", "-hot", "0.1"}

// roundsDir is where the shim keeps a container's pre-copy rounds.
func roundsDir(d *harness.Daemon, id string) string {
	return filepath.Join(filepath.Dir(d.RootfsPath(id)), "precopy")
}

// pauseAsync pauses task in the background; the channel gets Pause's
// result.
func pauseAsync(ctx context.Context, task containerd.Task) <-chan error {
	done := make(chan error, 1)
	go func() { done <- task.Pause(ctx) }()
	return done
}

// waitFor polls cond until it holds, failing t after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForExplained(t, what, cond, func() string { return "" })
}

// waitForExplained is waitFor whose failure adds what explain says of
// the state cond kept seeing.
func waitForExplained(t *testing.T, what string, cond func() bool, explain func() string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s%s", what, explain())
		}
	}
}

// criuPids are the CRIU processes on the machine that dump for runc
// (`criu swrk`), not the shim's `criu check` probes.
func criuPids() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.TrimSpace(string(comm)) == "criu" && strings.Contains(string(cmdline), "swrk") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitForCRIUExit waits until no `criu swrk` is left; when one stays, it
// fails t with what each is doing (parent, state, kernel stack), which is
// what tells a CRIU stuck on a dead task from one a killed runc orphaned.
func waitForCRIUExit(t *testing.T) {
	t.Helper()
	waitForExplained(t, "CRIU to exit", func() bool { return len(criuPids()) == 0 }, func() string {
		var b strings.Builder
		for _, pid := range criuPids() {
			fmt.Fprintf(&b, "\n%s", describeProcess(pid))
		}
		return b.String()
	})
}

// describeProcess is pid's command line, status and kernel stack, and
// its parent's command line, for a failure message.
func describeProcess(pid int) string {
	read := func(pid int, name string) string {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), name))
		if err != nil {
			return err.Error()
		}
		return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	}
	status := read(pid, "status")
	ppid := 0
	var keep []string
	for _, line := range strings.Split(status, "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "State", "PPid", "TracerPid", "SigPnd", "ShdPnd", "SigBlk":
			keep = append(keep, k+"="+strings.TrimSpace(v))
		}
		if k == "PPid" {
			ppid, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return fmt.Sprintf("criu %d: %s\n  %s\n  wchan %s\n  stack:\n%s\n  parent %d: %s",
		pid, read(pid, "cmdline"), strings.Join(keep, " "), read(pid, "wchan"),
		read(pid, "stack"), ppid, read(ppid, "cmdline"))
}

// killDumpingCRIU SIGKILLs the CRIU that pre-dumps the process pid into
// a round under rounds and returns its pid. runc also starts short-lived
// `criu swrk` processes that only answer a version request, so "the first
// swrk seen" is not the dumper: the dumper is the tracer of the workload
// while the round has it seized, or a CRIU holding the round's image dir
// open (runc hands it the dir as an inherited fd; a version probe gets
// none). It gives up when paused (the Pause doing the rounds) returns
// first.
func killDumpingCRIU(pid int, rounds string, paused <-chan error) (int, error) {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		select {
		case err := <-paused:
			return 0, fmt.Errorf("the pause returned (%v) before its first round's CRIU could be killed", err)
		default:
		}
		var victims []int
		if tracer := tracerPid(pid); tracer > 0 {
			victims = append(victims, tracer)
		}
		for _, p := range criuPids() {
			if holdsFileUnder(p, rounds) {
				victims = append(victims, p)
			}
		}
		for _, v := range victims {
			if err := syscall.Kill(v, syscall.SIGKILL); err == nil {
				return v, nil
			}
		}
	}
	return 0, fmt.Errorf("no CRIU dumped process %d within a minute", pid)
}

// holdsFileUnder says whether process pid has a file under dir open.
func holdsFileUnder(pid int, dir string) bool {
	fds := fmt.Sprintf("/proc/%d/fd", pid)
	entries, _ := os.ReadDir(fds)
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(fds, e.Name()))
		if err == nil && (target == dir || strings.HasPrefix(target, dir+"/")) {
			return true
		}
	}
	return false
}

// tracerPid is the TracerPid of process pid (0 when untraced or gone).
func tracerPid(pid int) int {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// checkpointPaused checkpoints the paused container id into ref as ctr
// does between its Pause and Resume, and returns the error.
func checkpointPaused(ctx context.Context, d *harness.Daemon, id, ref string) error {
	ctr, err := d.Client().LoadContainer(ctx, id)
	if err != nil {
		return err
	}
	_, err = ctr.Checkpoint(ctx, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW, containerd.WithCheckpointTask)
	return err
}

// TestPreCopyCRIUKilledMidRound kills CRIU in the middle of the first
// pre-dump round of a Pause: the Pause still succeeds (the container
// paused as asked), the checkpoint that follows is one-shot and says why,
// and after Resume the workload runs on with its memory intact.
func TestPreCopyCRIUKilledMidRound(t *testing.T) {
	requireSoftDirty(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "criu-killed", precopyshim.Runtime, preCopiedArgs...)
	before := queryMemload(t, ctx, task)

	paused := pauseAsync(ctx, task)
	killed, err := killDumpingCRIU(int(task.Pid()), roundsDir(d, task.ID()), paused)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed CRIU %d", killed)
	if err := <-paused; err != nil {
		t.Fatalf("pause after CRIU was killed: %v", err)
	}
	requireStatus(t, ctx, task, containerd.Paused)

	const ref = "precopy.test/checkpoint:criu-killed"
	if err := checkpointPaused(ctx, d, task.ID(), ref); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if err := task.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	report := requireFlatCheckpoint(t, ctx, d, ref)
	if report.PreCopied || !strings.Contains(report.Skipped, "pre-copy round 1") {
		t.Errorf("report does not say round 1 failed: %+v", report)
	}
	t.Logf("skipped: %s", report.Skipped)
	requireStatus(t, ctx, task, containerd.Running)
	after := queryMemload(t, ctx, task)
	if err := after.Check(); err != nil {
		t.Error(err)
	}
	if after.Counter <= before.Counter {
		t.Errorf("workload counter %d did not go on from %d", after.Counter, before.Counter)
	}
	if _, err := os.Stat(roundsDir(d, task.ID())); !os.IsNotExist(err) {
		t.Errorf("failed rounds left behind: %v", err)
	}
}

// TestPreCopyResumeDuringRounds resumes a container whose Pause is still
// pre-copying: the Resume ends the rounds after the one in progress, waits
// for the Pause (calls on one container are serialised), then thaws the
// container and discards the rounds.
func TestPreCopyResumeDuringRounds(t *testing.T) {
	requireSoftDirty(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "resume-during", precopyshim.Runtime, preCopiedArgs...)
	rounds := roundsDir(d, task.ID())

	paused := pauseAsync(ctx, task)
	waitFor(t, "pre-copy rounds", func() bool { _, err := os.Stat(rounds); return err == nil })
	if err := task.Resume(ctx); err != nil {
		t.Fatalf("resume during pre-copy: %v", err)
	}
	if err := <-paused; err != nil {
		t.Fatalf("pause: %v", err)
	}
	requireStatus(t, ctx, task, containerd.Running)
	if _, err := os.Stat(rounds); !os.IsNotExist(err) {
		t.Errorf("rounds kept after resume: %v", err)
	}
	if err := queryMemload(t, ctx, task).Check(); err != nil {
		t.Error(err)
	}
}

// TestPreCopyExitDuringRounds kills the workload while its Pause
// pre-copies: the Pause fails (there is nothing left to pause), the task
// is reported stopped, and no round, CRIU or frozen cgroup is left.
func TestPreCopyExitDuringRounds(t *testing.T) {
	requireSoftDirty(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "exit-during", precopyshim.Runtime, preCopiedArgs...)
	rounds := roundsDir(d, task.ID())
	exited, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}

	paused := pauseAsync(ctx, task)
	waitFor(t, "pre-copy rounds", func() bool { _, err := os.Stat(rounds); return err == nil })
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatalf("kill during pre-copy: %v", err)
	}
	<-exited
	err = <-paused
	t.Logf("pause of an exiting task: %v", err)
	requireStatus(t, ctx, task, containerd.Stopped)
	if _, err := os.Stat(rounds); !os.IsNotExist(err) {
		t.Errorf("rounds kept after the task exited: %v", err)
	}
	waitForCRIUExit(t)
	if _, err := task.Delete(ctx); err != nil {
		t.Errorf("delete: %v", err)
	}
}

// TestPreCopyConcurrentCheckpoints runs two `ctr c checkpoint` of one
// container at once. Calls on a container are serialised: each checkpoint
// either succeeds with a flat image or fails with a clear error (the
// second Pause finds the container paused, as with stock runc-v2), at
// least one succeeds, and the container runs on afterwards.
func TestPreCopyConcurrentCheckpoints(t *testing.T) {
	requireSoftDirty(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemloadWith(t, d, "concurrent", precopyshim.Runtime, preCopiedArgs...)

	refs := []string{"precopy.test/concurrent:1", "precopy.test/concurrent:2"}
	errs := make([]error, len(refs))
	var wg sync.WaitGroup
	for i, ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = d.Ctr(ctx, "c", "checkpoint", "--task", "--rw", task.ID(), ref)
		}()
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		if err != nil {
			t.Logf("checkpoint %s: %v", refs[i], err)
			if !strings.Contains(err.Error(), "paused") {
				t.Errorf("checkpoint %s failed without saying why: %v", refs[i], err)
			}
			continue
		}
		ok++
		report := requireFlatCheckpoint(t, ctx, d, refs[i])
		t.Logf("checkpoint %s: pre-copied %v, %d rounds, skipped %q", refs[i], report.PreCopied, len(report.Rounds), report.Skipped)
		// The refused Pause must not have discarded the rounds of the
		// Pause it found.
		if ok == 1 && !report.PreCopied {
			t.Errorf("checkpoint %s lost its rounds to the concurrent one: %+v", refs[i], report)
		}
	}
	if ok == 0 {
		t.Error("neither checkpoint succeeded")
	}
	// A failed ctr may have left the container paused (it does not resume
	// after its own Pause failed); the other resumed it.
	if st, err := task.Status(ctx); err == nil && st.Status == containerd.Paused {
		t.Errorf("container left paused")
	}
	if err := queryMemload(t, ctx, task).Check(); err != nil {
		t.Error(err)
	}
}

// TestPreCopyMemoryBudget gives a container a memory budget for its round
// images smaller than two rounds: pre-copy stops after the first, says so,
// and the checkpoint is still pre-copied and flat.
func TestPreCopyMemoryBudget(t *testing.T) {
	requireSoftDirty(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemloadAnnotated(t, d, "memory-budget", precopyshim.Runtime, map[string]string{
		settings.AnnotationMinSize:      "16MiB",
		settings.AnnotationMemoryBudget: "56MiB",
		// Never met, so that only the budget can stop round 1.
		settings.AnnotationTargetDowntime: "1us",
	}, "-mib", "48", "-dirty-mibps", "16", "-hot", "0.5")
	const ref = "precopy.test/checkpoint:memory-budget"
	checkpointCtr(t, ctx, d, task.ID(), ref)
	report := requireFlatCheckpoint(t, ctx, d, ref)
	if !report.PreCopied || len(report.Rounds) != 1 || report.Stop == nil || report.Stop.Reason != policy.ReasonMemoryBudget {
		t.Errorf("want one round stopped by the memory budget: %+v", report)
	}
}

// TestBadAnnotations creates containers with bad io.precopy.* annotations:
// the task is refused with an invalid-argument error naming the key and
// what it wants, and no task is left.
func TestBadAnnotations(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	for _, tc := range []struct {
		key, value, want string
	}{
		{settings.AnnotationMaxRounds, "lots", "whole number"},
		{settings.AnnotationMemoryBudget, "-1GiB", "byte size"},
		{settings.AnnotationPrefix + "max-round", "3", "did you mean " + settings.AnnotationMaxRounds},
	} {
		id := "bad-annotation-" + strings.ReplaceAll(tc.key, ".", "-")
		_, err := newMemloadTask(t, d, id, precopyshim.Runtime, []oci.SpecOpts{oci.WithAnnotations(map[string]string{tc.key: tc.value})})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.key) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s=%q: got %v, want an invalid-argument error naming the key and %q", tc.key, tc.value, err, tc.want)
		}
		ctr, lerr := d.Client().LoadContainer(ctx, id)
		if lerr != nil {
			t.Fatal(lerr)
		}
		if _, terr := ctr.Task(ctx, nil); !errdefs.IsNotFound(terr) {
			t.Errorf("%s: a task is left after the refusal: %v", id, terr)
		}
	}
}
