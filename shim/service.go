//go:build linux

// Package shim is precopy's task service: containerd's runc-v2 task
// service with the calls a checkpoint or a restore goes through (Create,
// Start, State, Pause, Resume, Checkpoint, Delete) routed through one type
// that adds pre-copy and what a container's network needs around CRIU
// (network.go). Every other call goes straight to the runc-v2 service.
// This package is the only one that knows containerd's task API; the
// checkpoint itself (rounds, final dump, flatten, report) is the engine's
// (precopy/), and the shim keeps each container's state between the calls
// (container.go).
//
// Standard clients (ctr, nerdctl, the CRI plugin, client.Task.Checkpoint)
// send Pause, then Checkpoint, then Resume. Pre-copy inside Checkpoint
// would copy a frozen container, so Pause pre-copies first, while the
// container runs, and only then freezes it; the Checkpoint that follows
// dumps just the last delta on top of the rounds.
package shim

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/imagechain"
	"github.com/precopy/precopy/precopy/settings"
)

// discardAfter is how long the rounds of a pre-copying Pause wait for the
// Checkpoint that standard clients send next; a Pause that no Checkpoint
// follows (a user's `ctr task pause`) must not hold their memory forever.
const discardAfter = 2 * time.Minute

// Service wraps containerd's runc-v2 task service.
type Service struct {
	// TTRPCTaskService is the runc-v2 task service; calls Service does not
	// override are served by it unchanged.
	taskAPI.TTRPCTaskService

	defaults settings.Settings
	// configErr is what was wrong with the config file: every Create
	// fails with it rather than run on defaults the operator did not ask
	// for.
	configErr error

	mu         sync.Mutex
	containers map[string]*container
	// pinners are the pinners by precopyd address, made once (pinnerFor).
	pinners map[string]pinner
	// criu is the CRIU configuration of this shim's dumps.
	criu criuConfig

	// What the shim uses of the machine, set by New; tests replace them.
	now           func() time.Time
	afterFunc     func(time.Duration, func()) stopper
	discardAfter  time.Duration
	dirtyTracking func() (bool, string)
	criuOptions   func(ownNetns bool) []string
	newRunc       func(bundle, namespace string) (runcHandle, error)
	newPinner     func(addr string) pinner
	// newLocalPinner is the shim's own pinner of a container's layer,
	// recorded in its bundle, with the container's pin limit.
	newLocalPinner func(bundle string, maxCopy time.Duration) pinner
	// engineFor makes a container's engine; tests fake CRIU's files
	// through it.
	engineFor func(c *container, rt precopy.Runtime) *precopy.Engine
}

// stopper is a timer as the shim uses it.
type stopper interface{ Stop() bool }

// New wraps inner, the runc-v2 task service of this shim process.
func New(inner taskAPI.TTRPCTaskService, defaults settings.Settings) *Service {
	s := &Service{
		TTRPCTaskService: inner, defaults: defaults, containers: map[string]*container{}, pinners: map[string]pinner{},
		now:            time.Now,
		afterFunc:      func(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) },
		discardAfter:   discardAfter,
		dirtyTracking:  softDirty,
		newRunc:        newRunc,
		newPinner:      newPrecopydPinner,
		newLocalPinner: newLocalPinner,
	}
	s.criuOptions = s.criu.use
	s.engineFor = newEngine
	return s
}

// NewFromConfig wraps inner with the defaults of the shim's config file
// (settings.Path). A bad config file fails every Create with an error
// naming the file and the setting.
func NewFromConfig(inner taskAPI.TTRPCTaskService) *Service {
	defaults, err := settings.Load(settings.Path())
	s := New(inner, defaults)
	if err != nil {
		s.configErr = err
		log.L.WithError(err).Error("precopy: bad config file; containers cannot be created until it is fixed")
	}
	return s
}

// RegisterTTRPC registers the wrapper, not the inner service: the inner
// service's own RegisterTTRPC would serve the task API without the hooks.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

func (s *Service) container(id string) *container {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.containers[id]
}

// Create creates a container, or restores one when r.Checkpoint is set.
// The container's settings come from its OCI annotations; a bad one fails
// the create, so it is never silently ignored.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	if s.configErr != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: %w: %w", r.ID, s.configErr, errdefs.ErrInvalidArgument))
	}
	cs, spec, err := readSpec(r.Bundle, s.defaults)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: %w: %w", r.ID, err, errdefs.ErrInvalidArgument))
	}
	ns, err := namespaceOf(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: %w: %w", r.ID, err, errdefs.ErrFailedPrecondition))
	}
	// A checkpoint image is input from elsewhere, restored by CRIU as
	// root, which follows whatever names it opens: a symlinked pages file
	// or a parent link would have it read any file on the host as the
	// task's memory. Vetted before anything reads it.
	if r.Checkpoint != "" {
		if err := imagechain.CheckFlat(r.Checkpoint); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: restore: %w: %w", r.ID, err, errdefs.ErrInvalidArgument))
		}
	}
	if err := clearRoundsDir(ctx, cs.RoundsDir, ns, r.ID); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: %w", r.ID, err))
	}
	network, err := setUpNetwork(ctx, r.Bundle, r.Checkpoint, spec, cs.TCP)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: %w", r.ID, err))
	}
	resp, err := s.TTRPCTaskService.Create(ctx, r)
	if err != nil {
		return nil, err
	}
	c := s.newContainer(r, ns, cs, spec)
	c.network = network
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	// Probing CRIU takes a few execs of it: do it now, not inside the
	// first checkpoint's frozen window.
	go s.criuOptions(spec.ownNetns)
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "restore": r.Checkpoint != "", "precopy_mode": cs.Mode}).Debug("precopy: create")
	return resp, nil
}

// State is the runc-v2 service's, recorded: whether a client looked at the
// task right before a Pause, or saw it paused after, tells a checkpoint's
// own pause from one a user holds (see earlythaw.go).
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	resp, err := s.TTRPCTaskService.State(ctx, r)
	if err == nil && r.ExecID == "" {
		if c := s.container(r.ID); c != nil {
			c.states.record(resp.Status, s.now())
		}
	}
	return resp, err
}

// Start starts a task or an exec process. The start of a container's task
// is recorded for the State record (see stateLog.start); a container
// created from a checkpoint is restored here, after which its CRIU options
// go back to those of its dumps (network.go).
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	resp, err := s.TTRPCTaskService.Start(ctx, r)
	c := s.container(r.ID)
	if c == nil || r.ExecID != "" {
		return resp, err
	}
	if err == nil {
		c.states.start(s.now())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.network.restored(); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("precopy: CRIU options of the restored container")
	}
	return resp, err
}

// Pause pre-copies the container's memory while it runs, then freezes it.
// A Pause of an already paused container, or one pre-copy skips, costs
// nothing extra.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	c := s.container(r.ID)
	if c == nil {
		return s.TTRPCTaskService.Pause(ctx, r)
	}
	return s.pause(ctx, c, r)
}

// Resume thaws a container; rounds no checkpoint used are discarded. A
// Resume that arrives while the Pause still pre-copies ends the rounds
// after the one in progress.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	c := s.container(r.ID)
	if c == nil {
		return s.TTRPCTaskService.Resume(ctx, r)
	}
	return s.resume(ctx, c, r)
}

// Checkpoint dumps a container into r.Path: on top of the rounds its Pause
// pre-copied, or, for a client that checkpoints a running task without
// pausing it, after pre-copying now. The image is flat either way, and
// holds precopy's report.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	c := s.container(r.ID)
	if c == nil {
		return s.TTRPCTaskService.Checkpoint(ctx, r)
	}
	if err := s.checkpoint(ctx, c, r); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("checkpoint %s: %w", r.ID, err))
	}
	return &ptypes.Empty{}, nil
}

// Delete deletes a container or an exec process; a container's pending
// rounds and pin go with it.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, err := s.TTRPCTaskService.Delete(ctx, r)
	if err != nil || r.ExecID != "" {
		return resp, err
	}
	if c := s.container(r.ID); c != nil {
		s.deleted(ctx, c)
		s.mu.Lock()
		delete(s.containers, r.ID)
		s.mu.Unlock()
	}
	return resp, nil
}

// clearRoundsDir makes sure a container created under a configured rounds
// dir starts with none of its own there: a shim that died cannot have
// removed its predecessor's (same namespace and id), and the engine must
// never take a stale kept image for this task's.
func clearRoundsDir(ctx context.Context, base, ns, id string) error {
	if base == "" {
		return nil
	}
	dir := roundsDir(base, "", ns, id)
	_, stale := os.Lstat(dir)
	if err := removeRoundsDir(base, ns, id); err != nil {
		return fmt.Errorf("clear rounds dir: %w", err)
	}
	if stale == nil {
		log.G(ctx).WithField("id", id).Warnf("precopy: removed %s, left by an earlier container of this id", dir)
	}
	return nil
}
