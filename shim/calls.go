//go:build linux

package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	apitask "github.com/containerd/containerd/api/types/task"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
)

// pause is Pause of a container the shim serves: pre-copy, then freeze.
func (s *Service) pause(ctx context.Context, c *container, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	p := pauseRecord{arrived: s.now(), lookedAt: c.states.lastRunning()}
	if c.mayThawWritable() {
		// A client may diff the writable layer between its Pause and its
		// Checkpoint: the early-thaw window grows with the layer, measured
		// while the task runs.
		p.layerBytes = layerSize(c.upper)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// A pin left from an earlier checkpoint (one no Resume followed)
	// would give this checkpoint's rw-layer diff the old layer.
	s.unpin(ctx, c, "new pause")
	running, why := s.taskRunning(ctx, c)
	p.frozeRunning = running
	// A Pause that finds rounds pending (another client's Pause, waiting
	// for its Checkpoint) leaves them to that client.
	var rounds *precopy.Rounds
	if c.phase != paused {
		rounds = s.prepare(ctx, c, precopy.TriggerPause, why, c.mayThawEarly(p))
	}
	resp, err := s.TTRPCTaskService.Pause(ctx, r)
	if err != nil {
		if rounds != nil {
			rounds.Discard() // nothing else holds them; a failure leaves only files in the bundle
		}
		return nil, err
	}
	p.frozenAt = s.now()
	if rounds == nil {
		c.pause = p // a second Pause: the checkpoint's pause is no longer its own
		return resp, nil
	}
	s.paused(c, rounds, p)
	return resp, nil
}

// taskRunning asks the runc-v2 service whether the task runs; why says
// what it is if not.
func (s *Service) taskRunning(ctx context.Context, c *container) (running bool, why string) {
	st, err := s.TTRPCTaskService.State(ctx, &taskAPI.StateRequest{ID: c.id})
	if err != nil {
		return false, fmt.Sprintf("task state: %v", err)
	}
	if st.Status != apitask.Status_RUNNING {
		return false, fmt.Sprintf("task is %s, not running", st.Status)
	}
	return true, ""
}

// prepare is what a checkpoint does before it freezes the task: pre-copy
// rounds (or the report of why there are none), then the report's account
// of its network namespace (a few ms), both while the task runs.
// runsAfterDump says whether the task is expected to run again right after
// the final dump (see precopy.Engine.PreCopy). Callers hold c.mu.
func (s *Service) prepare(ctx context.Context, c *container, trigger precopy.Trigger, notRunning string, runsAfterDump bool) *precopy.Rounds {
	r := s.preCopy(ctx, c, trigger, notRunning, runsAfterDump)
	r.Report.Network = s.readNetwork(ctx, c)
	return r
}

// preCopy runs pre-copy rounds on c, or says in the report why not (notRunning,
// if not "", is why the task cannot be pre-copied). Callers hold c.mu.
func (s *Service) preCopy(ctx context.Context, c *container, trigger precopy.Trigger, notRunning string, runsAfterDump bool) *precopy.Rounds {
	if c.settings.Mode != settings.ModeAlways {
		return c.engine.Skip(trigger, fmt.Sprintf("pre-copy mode is %q", c.settings.Mode))
	}
	if ok, why := s.dirtyTracking(); !ok {
		return c.engine.Skip(trigger, "the kernel cannot track dirty memory: "+why)
	}
	if notRunning != "" {
		return c.engine.Skip(trigger, notRunning)
	}
	s.criuOptions(c.spec.ownNetns)
	defer c.rounds.end()
	return c.engine.PreCopy(ctx, trigger, c.rounds.start(), runsAfterDump)
}

// resume is Resume of a container the shim serves.
func (s *Service) resume(ctx context.Context, c *container, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	c.rounds.interrupt()
	c.mu.Lock()
	defer c.mu.Unlock()
	// The checkpoint's client resumes: its rw-layer diff is done. The pin
	// goes after the thaw, outside the frozen window.
	defer s.unpin(ctx, c, "resumed")
	if c.resumed(ctx) {
		// The checkpoint already thawed it (and published TaskResumed):
		// the client's Resume that ends its checkpoint succeeds without
		// doing it twice.
		return &ptypes.Empty{}, nil
	}
	return s.TTRPCTaskService.Resume(ctx, r)
}

// deleted forgets a deleted container's rounds, pin and kept image.
func (s *Service) deleted(ctx context.Context, c *container) {
	c.rounds.interrupt()
	c.mu.Lock()
	defer c.mu.Unlock()
	s.unpin(ctx, c, "container deleted")
	c.drop(ctx, "container deleted")
	c.engine.Release()
	if err := removeRoundsDir(c.settings.RoundsDir, c.namespace, c.id); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("precopy: remove the container's rounds dir")
	}
	c.phase, c.pause = idle, pauseRecord{}
}

// checkpoint is Checkpoint of a container the shim serves.
func (s *Service) checkpoint(ctx context.Context, c *container, r *taskAPI.CheckpointTaskRequest) error {
	opts, err := checkpointOptions(r)
	if err != nil {
		return err
	}
	criuOptions := s.criuOptions(c.spec.ownNetns)
	c.mu.Lock()
	defer c.mu.Unlock()
	cp, cleanup, err := s.checkpointRequest(c, r, opts)
	if err != nil {
		return err
	}
	defer cleanup()
	// What the Pause before decided stands; without one (a client that
	// checkpoints a running task), decide now.
	rounds := c.take()
	if rounds == nil {
		// Nobody paused the task: a leave-running dump freezes it only
		// while CRIU dumps.
		_, why := s.taskRunning(ctx, c)
		rounds = s.prepare(ctx, c, precopy.TriggerCheckpoint, why, !opts.Exit)
	}
	rounds.Report.CRIUOptions = criuOptions
	decision, thaw := c.earlyThaw(opts.Exit, s.now())
	rounds.Report.Thaw = thaw
	thawed := false
	cp.AfterDump = func(ctx context.Context) bool {
		thawed = s.afterDump(ctx, c, decision, thaw)
		return thawed
	}
	_, err = c.engine.Checkpoint(ctx, rounds, cp)
	c.checkpointed(thawed)
	return err
}

// checkpointOptions are r's runc checkpoint options (none: the defaults).
func checkpointOptions(r *taskAPI.CheckpointTaskRequest) (*options.CheckpointOptions, error) {
	opts := &options.CheckpointOptions{}
	if r.Options != nil {
		if err := typeurl.UnmarshalTo(r.Options, opts); err != nil {
			return nil, fmt.Errorf("options: %w: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	return opts, nil
}

// checkpointRequest is r as the engine sees it. CRIU's log and statistics
// land in its work dir, which the runc-v2 service deletes unless the
// caller chose one (the CRI plugin does; ctr and a CRI handler with
// precopy's own runtime type do not): then it is one of ours, whose log
// and statistics go into the image, where they travel with it, and which
// cleanup removes.
func (s *Service) checkpointRequest(c *container, r *taskAPI.CheckpointTaskRequest, opts *options.CheckpointOptions) (precopy.Checkpoint, func(), error) {
	cp := precopy.Checkpoint{ImageDir: r.Path, WorkDir: opts.WorkPath, Exit: opts.Exit}
	cleanup := func() {}
	if cp.WorkDir == "" {
		cp.WorkDir, cp.KeepCRIULog = filepath.Join(c.bundle, "checkpoint-work"), true
		if err := os.RemoveAll(cp.WorkDir); err != nil {
			return cp, nil, fmt.Errorf("CRIU work dir: %w", err)
		}
		cleanup = func() { os.RemoveAll(cp.WorkDir) }
	}
	d := &taskDump{svc: s.TTRPCTaskService, id: r.ID, path: r.Path, opts: opts}
	d.opts.WorkPath = cp.WorkDir
	cp.Dumper = d
	return cp, cleanup, nil
}
