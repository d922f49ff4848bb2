//go:build linux

package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/imagechain"
	"github.com/precopy/precopy/precopy/policy"
	"github.com/precopy/precopy/precopy/settings"
)

// fakeTasks is the runc-v2 task service for one container, and the runc
// handle the shim makes for it: it keeps the task's status and cgroup as
// runc would, records the calls, and fails those it is told to. Calls the
// shim must not make reach the nil embedded service and panic.
type fakeTasks struct {
	taskAPI.TTRPCTaskService

	mu     sync.Mutex
	status apitask.Status
	// frozen is the cgroup's state; a failing dump (failDump) leaves it
	// frozen, as a CRIU killed while freezing does, or thawed
	// (failDumpThawed), as a CRIU killed once it had seized the tasks does.
	frozen                   bool
	calls                    []string
	failDump, failDumpThawed bool
	// dumpLog is CRIU's log a failing dump leaves in its work dir.
	dumpLog string
	// failPause fails Pause as if the task had just exited.
	failPause bool
	deleted   bool
	// dumpOpts are the options of each Checkpoint.
	dumpOpts []*options.CheckpointOptions
	// preDumpStarted, if set, gets each pre-dump as it starts; the
	// pre-dump then waits for preDumpGo.
	preDumpStarted chan int
	preDumpGo      chan struct{}
	preDumps       int
	// preDumpParents are the parents each pre-dump got.
	preDumpParents []string
}

func (f *fakeTasks) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

// called is the calls so far.
func (f *fakeTasks) called() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeTasks) count(call string) (n int) {
	for _, c := range f.called() {
		if c == call {
			n++
		}
	}
	return n
}

func (f *fakeTasks) Create(_ context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	f.record("create")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = apitask.Status_RUNNING
	return &taskAPI.CreateTaskResponse{Pid: uint32(os.Getpid())}, nil
}

func (f *fakeTasks) Start(_ context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	f.record("start")
	return &taskAPI.StartResponse{Pid: uint32(os.Getpid())}, nil
}

func (f *fakeTasks) State(_ context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleted {
		return nil, errgrpc.ToGRPC(fmt.Errorf("task %s: %w", r.ID, errdefs.ErrNotFound))
	}
	// The task's init is this test: its network namespace is the
	// container's.
	return &taskAPI.StateResponse{ID: r.ID, Status: f.status, Pid: uint32(os.Getpid())}, nil
}

// transition moves the task from status from to status to, frozen or not,
// or fails as runc-v2 does.
func (f *fakeTasks) transition(call string, from, to apitask.Status, frozen bool) (*ptypes.Empty, error) {
	f.record(call)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleted {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%s: %w", call, errdefs.ErrNotFound))
	}
	if f.status != from {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%s: task is %s: %w", call, f.status, errdefs.ErrFailedPrecondition))
	}
	f.status, f.frozen = to, frozen
	return &ptypes.Empty{}, nil
}

func (f *fakeTasks) Pause(_ context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	if f.failPause {
		f.record("pause")
		return nil, errgrpc.ToGRPC(fmt.Errorf("pause: task exited: %w", errdefs.ErrNotFound))
	}
	return f.transition("pause", apitask.Status_RUNNING, apitask.Status_PAUSED, true)
}

func (f *fakeTasks) Resume(_ context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	return f.transition("resume", apitask.Status_PAUSED, apitask.Status_RUNNING, false)
}

func (f *fakeTasks) Delete(_ context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	f.record("delete")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = true
	return &taskAPI.DeleteResponse{}, nil
}

func (f *fakeTasks) Pids(context.Context, *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	return &taskAPI.PidsResponse{Processes: []*apitask.ProcessInfo{{Pid: uint32(os.Getpid())}}}, nil
}

// Checkpoint writes a pages file (and the parent link, as CRIU does) into
// the image dir and leaves the task as runc-v2 does: stopped in exit mode.
func (f *fakeTasks) Checkpoint(_ context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	f.record("checkpoint")
	var opts options.CheckpointOptions
	if r.Options != nil {
		if err := typeurl.UnmarshalTo(r.Options, &opts); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dumpOpts = append(f.dumpOpts, &opts)
	if f.failDump {
		f.frozen = !f.failDumpThawed
		if f.dumpLog != "" {
			os.MkdirAll(opts.WorkPath, 0o700)
			os.WriteFile(filepath.Join(opts.WorkPath, "dump.log"), []byte(f.dumpLog), 0o600)
		}
		return nil, errgrpc.ToGRPC(errors.New("criu failed: read unixpacket: EOF"))
	}
	if err := writeImage(r.Path, opts.ParentPath); err != nil {
		return nil, err
	}
	if opts.Exit {
		f.status = apitask.Status_STOPPED
	}
	return &ptypes.Empty{}, nil
}

// writeImage writes a dump's image into dir, with a parent link if parent
// is not "".
func writeImage(dir, parent string) error {
	if parent != "" {
		if err := os.Symlink(parent, filepath.Join(dir, "parent")); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "inventory.img"), []byte("inventory"), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "pages-1.img"), make([]byte, 4096), 0o600)
}

// fakeTasks is its own runc handle.

func (f *fakeTasks) PreDump(_ context.Context, _ string, d precopy.Dirs) error {
	f.mu.Lock()
	f.preDumps++
	n, started, proceed := f.preDumps, f.preDumpStarted, f.preDumpGo
	f.mu.Unlock()
	if started != nil {
		started <- n
		<-proceed
	}
	f.mu.Lock()
	f.preDumpParents = append(f.preDumpParents, d.Parent)
	f.mu.Unlock()
	return writeImage(d.Image, d.Parent)
}

func (f *fakeTasks) Frozen(context.Context, string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frozen, nil
}

func (f *fakeTasks) Freeze(context.Context, string) error {
	f.record("runc pause")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = true
	return nil
}

func (f *fakeTasks) Thaw(context.Context, string) error {
	f.record("runc resume")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = false
	return nil
}

// fakeTimer is a discard timer the test fires.
type fakeTimer struct {
	after   time.Duration
	fire    func()
	stopped bool
}

func (t *fakeTimer) Stop() bool { t.stopped = true; return true }

// fakePinner pins in a map; it fails Pin after pinning when told to (a
// call that timed out after the copy), and Unpin when told to.
type fakePinner struct {
	mu                 sync.Mutex
	pinned             map[string]bool
	failPin, failUnpin bool
	// refuse, when set, is returned by Pin, which then pins nothing.
	refuse error
	// where names the fake in its results.
	where string
}

func newFakePinner(where string) *fakePinner {
	return &fakePinner{pinned: map[string]bool{}, where: where}
}

func (p *fakePinner) Pin(_ context.Context, upper string) (pinResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refuse != nil {
		return pinResult{}, p.refuse
	}
	p.pinned[upper] = true
	if p.failPin {
		return pinResult{}, errors.New("deadline exceeded after the copy")
	}
	return pinResult{Bytes: 4096, Files: 1, Cost: time.Millisecond, Where: p.where}, nil
}

func (p *fakePinner) Unpin(_ context.Context, upper string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failUnpin {
		return errors.New("pinner unreachable")
	}
	delete(p.pinned, upper)
	return nil
}

func (p *fakePinner) holds(upper string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pinned[upper]
}

// harness is a Service on a fakeTasks, with a clock and timers the test
// moves, serving one container created from an OCI spec with the given
// annotations (and a read-only rootfs when readonly).
type harness struct {
	t     *testing.T
	s     *Service
	tasks *fakeTasks
	pins  *fakePinner
	// local is the shim's own pinner, tried when pins (precopyd's)
	// refuses the layer as not its own.
	local  *fakePinner
	timers []*fakeTimer
	now    time.Time
	ctx    context.Context
	id     string
	bundle string
	upper  string
	image  string
	// rounds is where the container's engine keeps its rounds.
	rounds string
}

// testSettings pre-copy two rounds of any container, and pin through a
// pinner (the harness's fake).
func testSettings() settings.Settings {
	s := settings.Default()
	s.Policy = policy.Config{FixedRounds: 2, TargetFreeze: time.Millisecond}
	s.PrecopydAddress = "fake"
	return s
}

func newHarness(t *testing.T, annotations map[string]string, readonly bool) *harness {
	t.Helper()
	return newHarnessFrom(t, map[string]any{"annotations": annotations, "root": map[string]any{"readonly": readonly}}, "")
}

// newHarnessFrom is a harness whose container is created from OCI spec
// (restored from the image in dir checkpoint, if not "").
func newHarnessFrom(t *testing.T, spec map[string]any, checkpoint string) *harness {
	t.Helper()
	return newHarnessWith(t, testSettings(), spec, checkpoint)
}

// newHarnessWith is newHarnessFrom with the shim's defaults (the config
// file's) set to defaults.
func newHarnessWith(t *testing.T, defaults settings.Settings, spec map[string]any, checkpoint string) *harness {
	t.Helper()
	h := &harness{t: t, tasks: &fakeTasks{}, pins: newFakePinner("precopyd"), local: newFakePinner(pinnedByShim), now: time.Now(), id: "c1"}
	h.s = New(h.tasks, defaults)
	h.s.now = func() time.Time { return h.now }
	h.s.afterFunc = func(d time.Duration, f func()) stopper {
		tm := &fakeTimer{after: d, fire: f}
		h.timers = append(h.timers, tm)
		return tm
	}
	h.s.dirtyTracking = func() (bool, string) { return true, "" }
	h.s.criuOptions = func(bool) []string { return []string{"pre-dump-mode read"} }
	h.s.newRunc = func(string, string) (runcHandle, error) { return h.tasks, nil }
	h.s.newPinner = func(string) pinner { return h.pins }
	h.s.newLocalPinner = func(string, time.Duration) pinner { return h.local }
	h.s.engineFor = func(c *container, rt precopy.Runtime) *precopy.Engine {
		e := newEngine(c, rt)
		e.Stats = func(string) (policy.Round, error) {
			return policy.Round{PagesWritten: 1, Frozen: time.Millisecond}, nil
		}
		e.Flatten = func(dir, _ string) (imagechain.Result, error) {
			return imagechain.Result{Flattened: true}, os.Remove(filepath.Join(dir, "parent"))
		}
		return e
	}
	h.ctx = namespaces.WithNamespace(t.Context(), "test")
	h.create(spec, checkpoint)
	return h
}

func (h *harness) create(spec map[string]any, checkpoint string) {
	h.t.Helper()
	h.bundle = h.t.TempDir()
	b, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(h.bundle, "config.json"), b, 0o600); err != nil {
		h.t.Fatal(err)
	}
	h.upper = filepath.Join(h.t.TempDir(), "fs")
	rootfs := []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"upperdir=" + h.upper, "lowerdir=/l"}}}
	r := &taskAPI.CreateTaskRequest{ID: h.id, Bundle: h.bundle, Rootfs: rootfs, Checkpoint: checkpoint}
	if _, err := h.s.Create(h.ctx, r); err != nil {
		h.t.Fatal(err)
	}
	h.rounds = h.container().engine.Dir
}

func (h *harness) container() *container { return h.s.container(h.id) }

// look is a client's look at the task, as ctr and Task.Checkpoint do
// before they pause it.
func (h *harness) look() apitask.Status {
	h.t.Helper()
	st, err := h.s.State(h.ctx, &taskAPI.StateRequest{ID: h.id})
	if err != nil {
		h.t.Fatal(err)
	}
	return st.Status
}

func (h *harness) pause() error {
	_, err := h.s.Pause(h.ctx, &taskAPI.PauseRequest{ID: h.id})
	return err
}

func (h *harness) resume() error {
	_, err := h.s.Resume(h.ctx, &taskAPI.ResumeRequest{ID: h.id})
	return err
}

func (h *harness) delete() error {
	_, err := h.s.Delete(h.ctx, &taskAPI.DeleteRequest{ID: h.id})
	return err
}

// checkpoint checkpoints into a fresh image dir with opts (nil: none, as
// a runtime not named runc's gets) and returns the report written there
// (nil if none).
func (h *harness) checkpoint(opts *options.CheckpointOptions) (*precopy.Report, error) {
	h.t.Helper()
	h.image = h.t.TempDir()
	r := &taskAPI.CheckpointTaskRequest{ID: h.id, Path: h.image}
	if opts != nil {
		var err error
		if r.Options, err = typeurl.MarshalAnyToProto(opts); err != nil {
			h.t.Fatal(err)
		}
	}
	_, err := h.s.Checkpoint(h.ctx, r)
	report, _ := precopy.ReadReport(h.image)
	return report, err
}

// pausedCheckpoint is a client's checkpoint up to its Resume: a look at
// the task, Pause, Checkpoint. It returns the report.
func (h *harness) pausedCheckpoint() *precopy.Report {
	h.t.Helper()
	h.look()
	if err := h.pause(); err != nil {
		h.t.Fatal(err)
	}
	report, err := h.checkpoint(&options.CheckpointOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return report
}

// ctrCheckpoint is `ctr c checkpoint --task --rw`: a look at the task,
// Pause, Checkpoint, Resume. It returns the report.
func (h *harness) ctrCheckpoint() *precopy.Report {
	h.t.Helper()
	report := h.pausedCheckpoint()
	if err := h.resume(); err != nil {
		h.t.Fatal(err)
	}
	return report
}

// roundsLeft lists what pre-copy left in the bundle; nil when it left
// not even its dir.
func (h *harness) roundsLeft() []string {
	entries, err := os.ReadDir(h.rounds)
	if err != nil {
		return nil
	}
	names := []string{}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// phaseIs checks c's phase.
func (h *harness) phaseIs(want phase) {
	h.t.Helper()
	c := h.container()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.phase != want {
		h.t.Errorf("phase %s, want %s", c.phase, want)
	}
}
