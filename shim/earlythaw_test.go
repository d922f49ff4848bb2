//go:build linux

package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	apitask "github.com/containerd/containerd/api/types/task"

	"github.com/precopy/precopy/precopy/settings"
)

// TestEarlyThawOwnPause: a checkpoint's own pause (a look at the running
// task, Pause, Checkpoint) thaws right after the final dump when nothing
// can change the rw-layer diff; the client's Resume is then a no-op.
func TestEarlyThawOwnPause(t *testing.T) {
	h := newHarness(t, nil, true)
	report := h.ctrCheckpoint()
	th := report.Thaw
	if !th.Early || !strings.Contains(th.Reason, "read-only") || !th.ThawedAt.Equal(h.now) || !th.FrozenAt.Equal(h.now) {
		t.Fatalf("thaw %+v, want early for a read-only rootfs", th)
	}
	if !slicesHasPrefix(th.AfterThaw, "flatten") {
		t.Errorf("after the thaw: %q, want the flatten", th.AfterThaw)
	}
	// One thaw, the shim's; the client's Resume did not reach runc-v2.
	if n := h.tasks.count("resume"); n != 1 {
		t.Errorf("%d resumes reached the runc-v2 service, want 1", n)
	}
	h.phaseIs(idle)
}

func slicesHasPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// TestEarlyThawUserPause: a pause the user holds stays, whichever way the
// checkpoint finds it; each refusal says why.
func TestEarlyThawUserPause(t *testing.T) {
	for name, tc := range map[string]struct {
		// before runs between the look at the task and the Pause, between
		// the Pause and the Checkpoint.
		look       bool
		sinceLook  time.Duration
		lookAfter  bool
		sincePause time.Duration
		layer      int64
		want       string
	}{
		"ctr's checkpoint":                {look: true, want: ""},
		"no look before the pause":        {want: "no client looked at the task"},
		"a look long before the pause":    {look: true, sinceLook: 3 * time.Second, want: "no client looked at the task"},
		"a look at the paused task":       {look: true, lookAfter: true, want: "saw the task paused"},
		"a checkpoint long after":         {look: true, sincePause: 4 * time.Second, want: "came 4s after the pause"},
		"a large layer's diff in between": {look: true, sincePause: 4 * time.Second, layer: 64 << 20, want: ""},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, map[string]string{settings.AnnotationEarlyThaw: "force", settings.AnnotationMode: "never"}, false)
			if tc.layer > 0 {
				writeLayer(t, h.upper, tc.layer)
			}
			if tc.look {
				h.look()
			}
			h.now = h.now.Add(tc.sinceLook)
			if err := h.pause(); err != nil {
				t.Fatal(err)
			}
			if tc.lookAfter {
				h.look()
			}
			h.now = h.now.Add(tc.sincePause)
			report, err := h.checkpoint(&options.CheckpointOptions{})
			if err != nil {
				t.Fatal(err)
			}
			th := report.Thaw
			if th.Early != (tc.want == "") || !strings.Contains(th.Reason, tc.want) {
				t.Fatalf("thaw %+v, want early %v (%q)", th, tc.want == "", tc.want)
			}
			if want := map[bool]apitask.Status{true: apitask.Status_RUNNING, false: apitask.Status_PAUSED}[th.Early]; h.look() != want {
				t.Errorf("task %s after the checkpoint, want %s", h.look(), want)
			}
		})
	}
}

// writeLayer fills the writable layer upper with a file of n bytes.
func writeLayer(t *testing.T, upper string, n int64) {
	t.Helper()
	if err := os.MkdirAll(upper, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(upper, "data"))
	if err == nil {
		err = f.Truncate(n)
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestUserPauseReasons: each refusal of the early-thaw rule says why.
func TestUserPauseReasons(t *testing.T) {
	now := time.Now()
	own := pauseRecord{arrived: now, lookedAt: now.Add(-time.Second), frozeRunning: true, frozenAt: now}
	for _, tc := range []struct {
		pause pauseRecord
		want  string
	}{
		{own, ""},
		{pauseRecord{}, "the shim did not pause the container"},
		{pauseRecord{arrived: now, lookedAt: now, frozenAt: now}, "found the task already paused"},
	} {
		c := &container{pause: tc.pause}
		if got := c.userPause(now); got == "" != (tc.want == "") || !strings.Contains(got, tc.want) {
			t.Errorf("pause %+v: %q, want %q", tc.pause, got, tc.want)
		}
	}
}

func TestEarlyThawDecision(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mode      settings.EarlyThaw
		readonly  bool
		upper     string
		pinner    pinner
		exit      bool
		want      thawDecision
		reasonHas string
	}{
		{"read-only rootfs", settings.EarlyThawAuto, true, "", nil, false, thawYes, "read-only"},
		{"writable rootfs, no pinner", settings.EarlyThawAuto, false, "/u", nil, false, thawNo, "pins are off"},
		{"writable rootfs, layer unknown", settings.EarlyThawAuto, false, "", &fakePinner{}, false, thawNo, "unknown"},
		{"writable rootfs, pinner", settings.EarlyThawAuto, false, "/u", &fakePinner{}, false, thawIfPinned, "pinned"},
		{"forced", settings.EarlyThawForce, false, "/u", nil, false, thawYes, "force"},
		{"never", settings.EarlyThawNever, true, "/u", &fakePinner{}, false, thawNo, "never"},
		{"exit mode", settings.EarlyThawForce, true, "", nil, true, thawNo, "stops the container"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now()
			c := &container{spec: specFacts{readonlyRootfs: tc.readonly}, upper: tc.upper, pinner: tc.pinner}
			c.settings.EarlyThaw = tc.mode
			c.pause = pauseRecord{arrived: now, lookedAt: now, frozeRunning: true, frozenAt: now}
			got, thaw := c.earlyThaw(tc.exit, now)
			if got != tc.want || !strings.Contains(thaw.Reason, tc.reasonHas) {
				t.Errorf("earlyThaw = %v (%q), want %v (%q)", got, thaw.Reason, tc.want, tc.reasonHas)
			}
			if thaw.Early {
				t.Error("the decision must not claim a thaw that has not happened")
			}
		})
	}
}

func TestDiffAllowance(t *testing.T) {
	if diffAllowance(0) != 0 || diffAllowance(-1) != 0 {
		t.Error("an unknown layer size gets an allowance")
	}
	if a, b := diffAllowance(1<<20), diffAllowance(1<<30); a <= 0 || b <= a {
		t.Errorf("allowances %v, %v: want them growing with the layer", a, b)
	}
	// The discard timer is never shorter than the window.
	p := pauseRecord{layerBytes: 4 << 30}
	if p.window() <= discardAfter {
		t.Fatalf("window %v: the test wants one longer than %v", p.window(), discardAfter)
	}
	h := newHarness(t, nil, false)
	writeLayer(t, h.upper, 4<<30)
	h.look()
	if err := h.pause(); err != nil {
		t.Fatal(err)
	}
	if after := h.timers[0].after; after != p.window() {
		t.Errorf("discard after %v, want the window %v", after, p.window())
	}
}

func TestWritableLayer(t *testing.T) {
	for _, tc := range []struct {
		mounts []*types.Mount
		want   string
	}{
		{[]*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"index=off", "workdir=/s/1/work", "upperdir=/s/1/fs", "lowerdir=/s/0/fs"}}}, "/s/1/fs"},
		{[]*types.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"rw", "rbind"}}}, "/s/1/fs"},
		{[]*types.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"ro", "rbind"}}}, ""},
		{[]*types.Mount{{Type: "overlay", Options: []string{"lowerdir=/a:/b"}}}, ""},
		{nil, ""},
	} {
		if got := writableLayer(tc.mounts); got != tc.want {
			t.Errorf("writableLayer(%v) = %q, want %q", tc.mounts, got, tc.want)
		}
	}
}

// TestDaemonStateAfterStart: the State containerd's tasks service sends
// right after a task's Start (for the pid Start returns) is not a client
// looking before it pauses: a Pause soon after a Start, without a look,
// is a user's (containerd's TestCheckpointOnPauseStatus pauses a task it
// has just started and checkpoints it); a client's look later counts.
func TestDaemonStateAfterStart(t *testing.T) {
	start := func(h *harness) {
		h.t.Helper()
		if _, err := h.s.Start(h.ctx, &taskAPI.StartRequest{ID: h.id}); err != nil {
			h.t.Fatal(err)
		}
		h.look() // the daemon's, for the pid
	}
	t.Run("no look", func(t *testing.T) {
		h := newHarness(t, nil, true)
		start(h)
		if err := h.pause(); err != nil {
			t.Fatal(err)
		}
		report, err := h.checkpoint(&options.CheckpointOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if th := report.Thaw; th.Early || !strings.Contains(th.Reason, "no client looked") {
			t.Errorf("thaw %+v, want none: a user's pause", th)
		}
	})
	t.Run("a client's look", func(t *testing.T) {
		h := newHarness(t, nil, true)
		start(h)
		h.now = h.now.Add(startQuery)
		if th := h.pausedCheckpoint().Thaw; !th.Early {
			t.Errorf("thaw %+v, want early: the client looked, then paused", th)
		}
	})
}

// TestLastFlattenWaitsForTheThaw: the Pause tells the engine whether the
// checkpoint will thaw early, as far as it can know: on a task
// checkpointed before, ctr's checkpoint runs the last round's flatten
// after the thaw; a Pause with no look at the task before it (a pause the
// user holds) and a rootfs the diff must see frozen keep it before the
// freeze.
func TestLastFlattenWaitsForTheThaw(t *testing.T) {
	for name, tc := range map[string]struct {
		readonly, look bool
		want           bool
	}{
		"ctr's checkpoint, read-only rootfs":     {readonly: true, look: true, want: true},
		"a pause the user holds":                 {readonly: true},
		"writable rootfs whose layer is unknown": {look: true},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil, tc.readonly)
			if !tc.readonly {
				h.container().upper = "" // not one overlay: no pin, no early thaw
			}
			h.ctrCheckpoint()
			h.now = h.now.Add(stateBeforePause + time.Second) // the first checkpoint's look is old
			if tc.look {
				h.look()
			}
			if err := h.pause(); err != nil {
				t.Fatal(err)
			}
			report, err := h.checkpoint(&options.CheckpointOptions{})
			if err != nil {
				t.Fatal(err)
			}
			last := report.Rounds[len(report.Rounds)-1]
			if last.FlattenAfterDump != tc.want || report.Rounds[0].FlattenAfterDump {
				t.Errorf("rounds %+v: want the last round's flatten after the dump: %v", report.Rounds, tc.want)
			}
			if got := slicesHasPrefix(report.Thaw.AfterThaw, "flatten of round"); got != tc.want {
				t.Errorf("after the thaw %q (%s)", report.Thaw.AfterThaw, report.Thaw.Reason)
			}
			if err := h.resume(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestLastFlattenOfAnUnpausedCheckpoint: a Checkpoint nobody paused the
// task for runs pre-copy itself; the task runs again right after a
// leave-running dump, so its last flatten waits for it, but not when the
// dump stops the task.
func TestLastFlattenOfAnUnpausedCheckpoint(t *testing.T) {
	for name, exit := range map[string]bool{"leave running": false, "exit": true} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil, true)
			h.ctrCheckpoint()
			report, err := h.checkpoint(&options.CheckpointOptions{Exit: exit})
			if err != nil {
				t.Fatal(err)
			}
			if last := report.Rounds[len(report.Rounds)-1]; last.FlattenAfterDump == exit || report.Trigger != "checkpoint" {
				t.Errorf("trigger %s, rounds %+v: want the last flatten after the dump: %v", report.Trigger, report.Rounds, !exit)
			}
		})
	}
}
