//go:build linux

package shim

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/precopy/precopy/precopy/settings"
)

// TestPauseCheckpointResume is a standard client's checkpoint of a
// container with a writable rootfs and no pin: the Pause pre-copies, the
// Checkpoint dumps on the rounds and flattens, the task stays frozen
// until the client's Resume thaws it.
func TestPauseCheckpointResume(t *testing.T) {
	h := newHarness(t, map[string]string{settings.AnnotationEarlyThaw: "never"}, false)
	h.look()
	if err := h.pause(); err != nil {
		t.Fatal(err)
	}
	h.phaseIs(paused)
	if len(h.timers) != 1 || h.timers[0].after != discardAfter {
		t.Fatalf("discard timers %+v, want one of %s", h.timers, discardAfter)
	}
	report, err := h.checkpoint(&options.CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !report.PreCopied || len(report.Rounds) != 2 || report.Trigger != "pause" || report.Final == nil || report.Thaw.Early {
		t.Errorf("report %+v", report)
	}
	if !slices.Equal(report.CRIUOptions, []string{"pre-dump-mode read"}) {
		t.Errorf("CRIU options %q", report.CRIUOptions)
	}
	if d := h.tasks.dumpOpts; len(d) != 1 || !strings.HasPrefix(d[0].ParentPath, "../") || d[0].WorkPath == "" {
		t.Errorf("final dump options %+v: want one dump on the rounds, in the shim's work dir", d)
	}
	if !h.timers[0].stopped || h.roundsLeft() != nil {
		t.Errorf("after the checkpoint: timer stopped %v, rounds left %v", h.timers[0].stopped, h.roundsLeft())
	}
	h.phaseIs(idle)
	if st := h.look(); st != apitask.Status_PAUSED {
		t.Errorf("task %s after the checkpoint, want paused until the client resumes", st)
	}
	if err := h.resume(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"create", "pause", "checkpoint", "resume"}; !slices.Equal(h.tasks.called(), want) {
		t.Errorf("calls %q, want %q", h.tasks.called(), want)
	}
}

// TestCheckpointRunningTask: a client that checkpoints a running task
// without pausing it gets pre-copy within the Checkpoint; the task runs on.
func TestCheckpointRunningTask(t *testing.T) {
	h := newHarness(t, nil, false)
	report, err := h.checkpoint(&options.CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !report.PreCopied || report.Trigger != "checkpoint" || report.Thaw.Early || !strings.Contains(report.Thaw.Reason, "did not pause") {
		t.Errorf("report %+v, thaw %+v", report, report.Thaw)
	}
	if st := h.look(); st != apitask.Status_RUNNING || len(h.timers) != 0 {
		t.Errorf("task %s, %d timers", st, len(h.timers))
	}
}

// TestResumeDuringRounds: a Resume that arrives while the Pause still
// pre-copies ends the rounds after the one in progress, waits for the
// Pause, then discards the rounds and thaws.
func TestResumeDuringRounds(t *testing.T) {
	h := newHarness(t, map[string]string{settings.AnnotationRounds: "5"}, false)
	h.tasks.preDumpStarted, h.tasks.preDumpGo = make(chan int), make(chan struct{})
	paused := make(chan error)
	go func() { paused <- h.pause() }()
	<-h.tasks.preDumpStarted // round 1 runs
	resumed := make(chan error)
	go func() { resumed <- h.resume() }()
	// The Resume ends the rounds before it waits for the Pause.
	waitFor(t, func() bool {
		c := h.container()
		c.rounds.mu.Lock()
		defer c.rounds.mu.Unlock()
		return c.rounds.ch == nil
	})
	close(h.tasks.preDumpGo)
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	if err := <-resumed; err != nil {
		t.Fatal(err)
	}
	if h.tasks.preDumps != 1 {
		t.Errorf("%d rounds, want the one in progress", h.tasks.preDumps)
	}
	if want := []string{"create", "pause", "resume"}; !slices.Equal(h.tasks.called(), want) {
		t.Errorf("calls %q, want %q", h.tasks.called(), want)
	}
	if left := h.roundsLeft(); left != nil || !h.timers[0].stopped {
		t.Errorf("rounds left %v, timer stopped %v", left, h.timers[0].stopped)
	}
	h.phaseIs(idle)
}

// TestDeleteDuringRounds: the container is deleted (its task killed)
// while a Pause pre-copies: the Pause fails, and nothing of the rounds is
// left, nor any timer.
func TestDeleteDuringRounds(t *testing.T) {
	h := newHarness(t, map[string]string{settings.AnnotationRounds: "5"}, false)
	h.tasks.preDumpStarted, h.tasks.preDumpGo = make(chan int), make(chan struct{})
	paused := make(chan error)
	go func() { paused <- h.pause() }()
	<-h.tasks.preDumpStarted
	deleted := make(chan error)
	go func() { deleted <- h.delete() }()
	waitFor(t, func() bool { return h.tasks.count("delete") == 1 })
	close(h.tasks.preDumpGo)
	if err := <-paused; err == nil || !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("pause of a deleted task: %v, want not found", err)
	}
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	if left := h.roundsLeft(); left != nil || len(h.timers) != 0 || h.s.container(h.id) != nil {
		t.Errorf("rounds left %v, timers %d, container kept %v", left, len(h.timers), h.s.container(h.id) != nil)
	}
}

// TestDiscardTimer: a Pause no Checkpoint follows has its rounds
// discarded when the timer fires; a timer that fires late, after its
// rounds were taken and a new Pause made others, leaves those alone.
func TestDiscardTimer(t *testing.T) {
	h := newHarness(t, nil, false)
	h.s.discardAfter = time.Minute
	h.look()
	if err := h.pause(); err != nil {
		t.Fatal(err)
	}
	if h.timers[0].after != time.Minute {
		t.Errorf("timer of %s, want the injected minute", h.timers[0].after)
	}
	h.timers[0].fire()
	h.phaseIs(idle)
	if left := h.roundsLeft(); left != nil {
		t.Errorf("rounds left after the timer: %v", left)
	}
	report, err := h.checkpoint(&options.CheckpointOptions{})
	if err != nil || report.PreCopied || !strings.Contains(report.Skipped, "PAUSED") {
		t.Errorf("checkpoint after the discard: %+v, %v; want one-shot of the paused task", report, err)
	}
	if err := h.resume(); err != nil {
		t.Fatal(err)
	}

	// The race: Pause, Resume, Pause; then the first timer fires.
	h.look()
	if err := h.pause(); err != nil {
		t.Fatal(err)
	}
	if err := h.resume(); err != nil {
		t.Fatal(err)
	}
	h.look()
	if err := h.pause(); err != nil {
		t.Fatal(err)
	}
	late := h.timers[len(h.timers)-2]
	late.fire()
	h.phaseIs(paused)
	if left := h.roundsLeft(); len(left) != 1 {
		t.Fatalf("a late timer took the newer Pause's rounds: %v left", left)
	}
	report, err = h.checkpoint(&options.CheckpointOptions{})
	if err != nil || !report.PreCopied {
		t.Errorf("checkpoint on the newer rounds: %+v, %v", report, err)
	}
}

// TestDiscardTimerReal: the shim's timers are real ones.
func TestDiscardTimerReal(t *testing.T) {
	fired := make(chan struct{})
	New(nil, settings.Default()).afterFunc(time.Millisecond, func() { close(fired) })
	<-fired
}

// TestExitModeDumpFailure: an exit-mode checkpoint whose CRIU dies
// leaves the cgroup frozen (CRIU killed while freezing) or thawed (killed
// once it had seized the tasks, when it had thawed the cgroup): the shim
// puts it back as the client left it, running or paused, and returns the
// error.
func TestExitModeDumpFailure(t *testing.T) {
	for _, pause := range []bool{false, true} {
		for _, thawed := range []bool{false, true} {
			h := newHarness(t, map[string]string{settings.AnnotationMode: "never"}, false)
			if pause {
				h.look()
				if err := h.pause(); err != nil {
					t.Fatal(err)
				}
			}
			h.tasks.failDump, h.tasks.failDumpThawed = true, thawed
			if _, err := h.checkpoint(&options.CheckpointOptions{Exit: true}); err == nil || !strings.Contains(err.Error(), "criu failed") {
				t.Errorf("paused %v: checkpoint error %v, want CRIU's", pause, err)
			}
			// The client's own pause stays (or is made again); a cgroup
			// CRIU froze is thawed.
			frozen, _ := h.tasks.Frozen(h.ctx, h.id)
			wantResumes, wantPauses := 0, 0
			switch {
			case !pause && !thawed:
				wantResumes = 1
			case pause && thawed:
				wantPauses = 1
			}
			if frozen != pause || h.tasks.count("runc resume") != wantResumes || h.tasks.count("runc pause") != wantPauses {
				t.Errorf("paused %v, CRIU thawed %v: frozen %v after the failed dump, calls %q", pause, thawed, frozen, h.tasks.called())
			}
		}
	}
}

// TestFinalDumpThawedByDeadCRIU: a final dump on the rounds whose CRIU
// died having thawed the container the client paused is not redone
// one-shot (the container ran since the client's pause); the pause is
// made again, and the checkpoint fails saying why.
func TestFinalDumpThawedByDeadCRIU(t *testing.T) {
	h := newHarness(t, nil, false)
	h.look()
	if err := h.pause(); err != nil {
		t.Fatal(err)
	}
	h.tasks.failDump, h.tasks.failDumpThawed = true, true
	_, err := h.checkpoint(&options.CheckpointOptions{})
	if err == nil || !strings.Contains(err.Error(), "not redone") {
		t.Errorf("checkpoint error %v, want one saying it was not redone", err)
	}
	if frozen, _ := h.tasks.Frozen(h.ctx, h.id); !frozen || len(h.tasks.dumpOpts) != 1 || h.tasks.count("runc pause") != 1 {
		t.Errorf("frozen %v after %d dumps, calls %q; want one dump and the client's pause made again", frozen, len(h.tasks.dumpOpts), h.tasks.called())
	}
}

// TestPauseFailureDiscardsRounds: a Pause that pre-copied but could not
// freeze the task keeps nothing.
func TestPauseFailureDiscardsRounds(t *testing.T) {
	h := newHarness(t, nil, false)
	h.tasks.failPause = true
	if err := h.pause(); err == nil {
		t.Fatal("the failing pause succeeded")
	}
	if h.tasks.preDumps != 2 {
		t.Errorf("%d rounds before the pause, want 2", h.tasks.preDumps)
	}
	h.phaseIs(idle)
	if left := h.roundsLeft(); left != nil || len(h.timers) != 0 {
		t.Errorf("rounds %v, timers %d", left, len(h.timers))
	}
}

func TestPreCopySkipReasons(t *testing.T) {
	for name, tc := range map[string]struct {
		annotations map[string]string
		softDirty   bool
		want        string
	}{
		"mode never":    {map[string]string{settings.AnnotationMode: "never"}, true, `pre-copy mode is "never"`},
		"no soft-dirty": {nil, false, "the kernel cannot track dirty memory: no soft-dirty"},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.annotations, false)
			h.s.dirtyTracking = func() (bool, string) { return tc.softDirty, "no soft-dirty" }
			if report := h.ctrCheckpoint(); report.PreCopied || report.Skipped != tc.want {
				t.Errorf("skipped %q, want %q", report.Skipped, tc.want)
			}
		})
	}
}

// TestCallsOfOtherContainers go to the runc-v2 service unchanged.
func TestCallsOfOtherContainers(t *testing.T) {
	h := newHarness(t, nil, false)
	h.id = "other"
	h.look()
	if err := h.pause(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.checkpoint(&options.CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := h.resume(); err != nil {
		t.Fatal(err)
	}
	// An exec's State is not the task's.
	if _, err := h.s.State(h.ctx, &taskAPI.StateRequest{ID: "c1", ExecID: "e1"}); err != nil || !h.s.container("c1").states.lastRunning().IsZero() {
		t.Errorf("an exec's state was recorded as the task's: %v", err)
	}
	if err := h.delete(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"create", "pause", "checkpoint", "resume", "delete"}; !slices.Equal(h.tasks.called(), want) {
		t.Errorf("calls %q, want %q", h.tasks.called(), want)
	}
	if h.s.container("c1") == nil {
		t.Error("deleting another container forgot c1")
	}
}

func TestCreateRefusesBadInput(t *testing.T) {
	h := newHarness(t, nil, false)
	bundle := t.TempDir()
	if _, err := h.s.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c2", Bundle: bundle}); err == nil || !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Errorf("create without a spec: %v, want invalid argument", err)
	}
	if _, err := h.s.Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c2", Bundle: h.container().bundle}); err == nil || !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Errorf("create without a namespace: %v, want failed precondition", err)
	}
	// A restore from an image that is not one flat, safe image set is
	// refused before the runc-v2 service (and CRIU) sees it.
	image := t.TempDir()
	if err := os.Symlink("/etc/hostname", filepath.Join(image, "pages-1.img")); err != nil {
		t.Fatal(err)
	}
	calls := len(h.tasks.called())
	_, err := h.s.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c2", Bundle: h.container().bundle, Checkpoint: image})
	if !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) || !strings.Contains(err.Error(), "pages-1.img") {
		t.Errorf("restore from an image with a symlinked pages file: %v, want invalid argument naming the file", err)
	}
	if len(h.tasks.called()) != calls {
		t.Errorf("the refused restore reached the runc-v2 service: %q", h.tasks.called())
	}
}

// waitFor polls cond for up to a minute: it waits for another goroutine,
// it does not time anything.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("condition never held")
		}
	}
}

// TestIncrementalKeptUntilDelete: with io.precopy.incremental on, a
// checkpoint's image is kept in the bundle and the next checkpoint's first
// round dumps against it; Delete releases it, leaving nothing of
// pre-copy in the bundle.
func TestIncrementalKeptUntilDelete(t *testing.T) {
	h := newHarness(t, map[string]string{settings.AnnotationIncremental: "on"}, false)
	first := h.ctrCheckpoint()
	if inc := first.Incremental; inc == nil || !inc.Kept || inc.Parent != nil {
		t.Fatalf("first checkpoint's incremental %+v, want kept, no parent", inc)
	}
	if left := h.roundsLeft(); !slices.Equal(left, []string{"kept"}) {
		t.Errorf("bundle holds %v after the checkpoint, want the kept image", left)
	}
	second := h.ctrCheckpoint()
	if inc := second.Incremental; inc == nil || inc.Parent == nil || inc.Parent.Number != 1 || inc.Number != 2 {
		t.Errorf("second checkpoint's incremental %+v, want checkpoint 1 as parent", inc)
	}
	if p := h.tasks.preDumpParents; len(p) != 4 || p[0] != "" || p[2] != "../round-0" {
		t.Errorf("pre-dumps on %q, want the second checkpoint's first on the kept image", p)
	}
	if err := h.delete(); err != nil {
		t.Fatal(err)
	}
	if left := h.roundsLeft(); left != nil {
		t.Errorf("bundle holds %v after Delete", left)
	}
}

// TestRoundsDirConfigured: with the config file's rounds-dir, a
// container's rounds and kept image are in <rounds-dir>/<namespace>/<id>;
// Create removes what a dead predecessor of that id left there, and
// Delete removes it all, the namespace's dir included once empty.
func TestRoundsDirConfigured(t *testing.T) {
	base := t.TempDir()
	stale := filepath.Join(base, "test", "c1", "kept")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	defaults := testSettings()
	defaults.RoundsDir = base
	h := newHarnessWith(t, defaults, map[string]any{"annotations": map[string]string{settings.AnnotationIncremental: "on"}}, "")
	if want := filepath.Join(base, "test", "c1"); h.rounds != want {
		t.Errorf("rounds in %s, want %s", h.rounds, want)
	}
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the stale kept image survived Create: %v", err)
	}
	if inc := h.ctrCheckpoint().Incremental; inc == nil || !inc.Kept {
		t.Fatalf("checkpoint's incremental %+v, want kept", inc)
	}
	if _, err := os.Stat(filepath.Join(h.rounds, "kept")); err != nil {
		t.Errorf("kept image not in the rounds dir: %v", err)
	}
	if err := h.delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(base, "test")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the namespace's rounds dir outlived Delete: %v", err)
	}
}

// TestDeadShimRoundsRemoved: the shim binary's delete (containerd's
// cleanup after a dead shim) removes the rounds the shim left under the
// configured rounds dir, and nothing for an id that is not one path
// element.
func TestDeadShimRoundsRemoved(t *testing.T) {
	base := t.TempDir()
	config := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(config, []byte("rounds-dir = \""+base+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PRECOPY_CONFIG", config)
	left := filepath.Join(base, "ns", "c1", "round-1")
	other := filepath.Join(base, "ns", "c2")
	for _, d := range []string{left, other} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ctx := namespaces.WithNamespace(t.Context(), "ns")
	removeDeadShimRounds(ctx, "../ns/c2")
	removeDeadShimRounds(ctx, "c1")
	if _, err := os.Stat(filepath.Join(base, "ns", "c1")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the dead shim's rounds are still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another container's rounds were removed: %v", err)
	}
}
