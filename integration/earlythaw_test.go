package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
	precopyshim "github.com/precopy/precopy/shim"
)

// resumedEvents counts TaskResumed events of container id, in a
// subscription started now, up to the first exec of it started after:
// the shim publishes a container's events in order, so an exec that
// follows a checkpoint bounds every event the checkpoint caused.
type resumedEvents struct {
	id     string
	events <-chan []time.Time
}

func watchResumed(t *testing.T, ctx context.Context, d *harness.Daemon, id string) resumedEvents {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	envelopes, errs := d.Client().EventService().Subscribe(ctx, `topic=="/tasks/resumed"`, `topic=="/tasks/exec-started"`)
	out := make(chan []time.Time, 1)
	go func() {
		var resumed []time.Time
		for {
			select {
			case e := <-envelopes:
				v, err := typeurl.UnmarshalAny(e.Event)
				if err != nil {
					continue
				}
				switch ev := v.(type) {
				case *apievents.TaskResumed:
					if ev.ContainerID == id {
						resumed = append(resumed, e.Timestamp)
					}
				case *apievents.TaskExecStarted:
					if ev.ContainerID == id {
						out <- resumed
						return
					}
				}
			case <-errs:
				close(out)
				return
			}
		}
	}()
	return resumedEvents{id: id, events: out}
}

// TestEarlyThaw checkpoints containers with `ctr c checkpoint --task --rw`
// and checks when the shim thaws them: right after the final dump when
// the rootfs is read-only or the container opted in with
// io.precopy.early-thaw=force (a writable one the shim pins:
// TestEarlyThawOverlay), at the client's Resume with early-thaw never or
// pins off. Either way
// the client's Resume succeeds, exactly one TaskResumed is published, the
// task is running afterwards, and the image restores.
func TestEarlyThaw(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	// Large enough in the VM to be pre-copied, so that the flatten runs
	// after the thaw.
	args := memloadArgs
	if stack.softDirty {
		args = []string{"-mib", "96", "-dirty-mibps", "4", "-hot", "0.1"}
	}

	t.Run("writable rootfs without pins waits for resume", func(t *testing.T) {
		ctx := testContext(t, d)
		task := runMemloadAnnotated(t, d, "thaw-writable", precopyshim.Runtime,
			map[string]string{settings.AnnotationPinLimit: "0"}, args...)
		report, _ := checkpointWatched(t, ctx, d, task.ID(), "precopy.test/thaw:writable", false)
		if report.Thaw == nil || report.Thaw.Early || !strings.Contains(report.Thaw.Reason, "writable") {
			t.Errorf("want no early thaw because the rootfs is writable and pins are off: %+v", report.Thaw)
		}
	})

	t.Run("never waits for resume", func(t *testing.T) {
		ctx := testContext(t, d)
		task := runMemloadAnnotated(t, d, "thaw-never", precopyshim.Runtime,
			map[string]string{settings.AnnotationEarlyThaw: string(settings.EarlyThawNever)}, args...)
		report, _ := checkpointWatched(t, ctx, d, task.ID(), "precopy.test/thaw:never", false)
		if report.Thaw == nil || report.Thaw.Early || !strings.Contains(report.Thaw.Reason, "never") {
			t.Errorf("want no early thaw: %+v", report.Thaw)
		}
	})

	t.Run("force thaws after the dump", func(t *testing.T) {
		ctx := testContext(t, d)
		task := runMemloadAnnotated(t, d, "thaw-force", precopyshim.Runtime,
			map[string]string{settings.AnnotationEarlyThaw: string(settings.EarlyThawForce)}, args...)
		before := queryMemload(t, ctx, task)
		const ref = "precopy.test/thaw:force"
		report, _ := checkpointWatched(t, ctx, d, task.ID(), ref, true)
		if report.PreCopied && !containsPrefix(report.Thaw.AfterThaw, "flatten") {
			t.Errorf("pre-copied, but the flatten did not run after the thaw: %+v", report.Thaw)
		}
		removeContainer(t, d, task.ID())
		restored := restoreCtr(t, ctx, d, "thaw-force-dst", ref)
		checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
	})

	t.Run("read-only rootfs thaws after the dump", func(t *testing.T) {
		ctx := testContext(t, d)
		// The workload writes its status to a host dir mounted in; the
		// rootfs itself is read-only.
		state := t.TempDir()
		mounts := []specs.Mount{{Destination: "/state", Type: "bind", Source: state, Options: []string{"rbind", "rw"}}}
		task, err := newMemloadTask(t, d, "thaw-readonly", precopyshim.Runtime,
			[]oci.SpecOpts{oci.WithRootFSReadonly(), oci.WithMounts(mounts)},
			append([]string{"-status", "/state/status.json"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		status := filepath.Join(state, "status.json")
		if _, err := workload.WaitReadable(ctx, status); err != nil {
			t.Fatal(err)
		}
		checkpointWatched(t, ctx, d, task.ID(), "precopy.test/thaw:readonly", true)
		before, err := workload.ReadStatus(status)
		if err != nil {
			t.Fatal(err)
		}
		// Running: the workload goes on writing its status.
		for after := before; after.Counter <= before.Counter; time.Sleep(50 * time.Millisecond) {
			if after, err = workload.ReadStatus(status); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// checkpointWatched runs `ctr c checkpoint --task --rw` of container id
// into ref and checks the thaw: early or not as wantEarly says, one
// TaskResumed event (before ctr returned when early), the task running
// after. It returns the image's report and when ctr returned.
func checkpointWatched(t *testing.T, ctx context.Context, d *harness.Daemon, id, ref string, wantEarly bool) (*precopy.Report, time.Time) {
	t.Helper()
	watch := watchResumed(t, ctx, d, id)
	checkpointCtr(t, ctx, d, id, ref)
	done := time.Now()
	task := loadTask(t, ctx, d, id)
	// An exec ends the events the checkpoint caused (see resumedEvents).
	if _, err := d.Ctr(ctx, "task", "exec", "--exec-id", "barrier", id, "/"+harness.MemloadBinary, "-h"); err != nil {
		t.Logf("barrier exec: %v (its start is what counts)", err)
	}
	resumed := <-watch.events
	report := requireFlatCheckpoint(t, ctx, d, ref)
	t.Logf("thaw: %+v; pre-copied %v, fell back: %q", report.Thaw, report.PreCopied, report.FellBack)
	if report.Thaw == nil || report.Thaw.Early != wantEarly {
		t.Fatalf("early thaw %v, want %v: %+v", report.Thaw != nil && report.Thaw.Early, wantEarly, report.Thaw)
	}
	if len(resumed) != 1 {
		t.Errorf("%d TaskResumed events for one checkpoint, want 1", len(resumed))
	} else if wantEarly && !resumed[0].Before(done) {
		t.Errorf("TaskResumed at %v, after ctr returned at %v", resumed[0], done)
	}
	if wantEarly && !report.Thaw.ThawedAt.After(report.Thaw.FrozenAt) {
		t.Errorf("thawed at %v, not after the freeze at %v", report.Thaw.ThawedAt, report.Thaw.FrozenAt)
	}
	if st, err := task.Status(ctx); err != nil || st.Status != "running" {
		t.Errorf("task after the checkpoint: %+v, %v", st, err)
	}
	return report, done
}

func containsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}
