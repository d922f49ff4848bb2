//go:build linux

// Package shim is precopy's task service: containerd's runc-v2 task
// service with the calls a checkpoint goes through (Create, including
// restore, Pause, Resume, Checkpoint, Delete) routed through one type that
// adds pre-copy. Every other call goes straight to the runc-v2 service.
// This package is the only one that knows containerd's task API.
//
// Standard clients (ctr, nerdctl, the CRI plugin, client.Task.Checkpoint)
// send Pause, then Checkpoint, then Resume. Pre-copy inside Checkpoint
// would copy a frozen container, so Pause pre-copies first, while the
// container runs, and only then freezes it; the Checkpoint that follows
// dumps just the last delta on top of the rounds.
package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/settings"
	"github.com/precopy/precopy/snapshotter/pinservice"
)

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
	// pins are clients of precopyd, by socket address (see pinClient).
	pins map[string]*pinservice.Client
	// criu is the CRIU configuration of this shim's dumps.
	criu criuConfig
}

// New wraps inner, the runc-v2 task service of this shim process.
func New(inner taskAPI.TTRPCTaskService, defaults settings.Settings) *Service {
	return &Service{TTRPCTaskService: inner, defaults: defaults, containers: make(map[string]*container)}
}

// NewFromConfig wraps inner with the defaults of the shim's config file
// (settings.Path). A bad config file fails every Create
// with an error naming the file and the setting.
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
// The container's pre-copy settings come from its OCI annotations; a bad
// one fails the create, so it is never silently ignored.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	if s.configErr != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: %w: %w", r.ID, s.configErr, errdefs.ErrInvalidArgument))
	}
	cs, spec, err := s.settingsOf(r.Bundle)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: %w: %w", r.ID, err, errdefs.ErrInvalidArgument))
	}
	ns, err := namespaceOf(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: %w: %w", r.ID, err, errdefs.ErrFailedPrecondition))
	}
	resp, err := s.TTRPCTaskService.Create(ctx, r)
	if err != nil {
		return nil, err
	}
	c := &container{id: r.ID, bundle: r.Bundle, namespace: ns, settings: cs, readonlyRootfs: spec.readonlyRootfs, ownNetns: spec.ownNetns, upper: writableLayer(r.Rootfs)}
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	if c.upper != "" && cs.PrecopydAddress != "" && !c.readonlyRootfs {
		// Connect to precopyd now, not in a checkpoint's frozen window.
		if _, err := os.Stat(cs.PrecopydAddress); err == nil {
			s.pinClient(cs.PrecopydAddress)
		}
	}
	// Probing CRIU takes a few execs of it: do it now, not inside the
	// first checkpoint's frozen window.
	go s.criu.use(c.ownNetns)
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "restore": r.Checkpoint != "", "precopy_mode": cs.Mode}).Debug("precopy: create")
	return resp, nil
}

// specFacts are what the shim needs to know of a container's OCI spec
// besides its settings.
type specFacts struct {
	// readonlyRootfs: root.readonly.
	readonlyRootfs bool
	// ownNetns: the container has a network namespace other than the
	// host's (a new one, or one it joins, such as its pod's).
	ownNetns bool
}

// settingsOf reads the container's settings and specFacts from the
// bundle's OCI spec.
func (s *Service) settingsOf(bundle string) (settings.Settings, specFacts, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return settings.Settings{}, specFacts{}, err
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
		Root        *struct {
			Readonly bool `json:"readonly"`
		} `json:"root"`
		Linux *struct {
			Namespaces []struct {
				Type string `json:"type"`
			} `json:"namespaces"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return settings.Settings{}, specFacts{}, fmt.Errorf("read OCI spec: %w", err)
	}
	var facts specFacts
	facts.readonlyRootfs = spec.Root != nil && spec.Root.Readonly
	if spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			facts.ownNetns = facts.ownNetns || ns.Type == "network"
		}
	}
	cs, err := s.defaults.With(spec.Annotations)
	return cs, facts, err
}

// Pause pre-copies the container's memory while it runs, then freezes it.
// A Pause of an already paused container, or one pre-copy skips, costs
// nothing extra.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	c := s.container(r.ID)
	if c == nil {
		return s.TTRPCTaskService.Pause(ctx, r)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// A pin left from an earlier checkpoint (one no Resume followed)
	// would give this checkpoint's rw-layer diff the old layer.
	s.unpin(ctx, c, "new pause")
	// A Pause that finds rounds pending (another client's Pause, waiting
	// for its Checkpoint) leaves them to that client.
	fresh := c.report == nil
	if fresh {
		c.chain, c.report = s.preCopy(ctx, c, "pause")
	}
	resp, err := s.TTRPCTaskService.Pause(ctx, r)
	if err != nil {
		if fresh {
			c.dropChain(ctx, "pause failed")
		}
		return nil, err
	}
	c.pausedAt, c.thawedEarly = time.Now(), false
	if c.chain != nil && c.discard == nil {
		c.discard = time.AfterFunc(discardAfter, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.dropChain(context.Background(), fmt.Sprintf("no checkpoint within %s of the pause", discardAfter))
		})
	}
	return resp, nil
}

// Resume thaws a container; rounds no checkpoint used are discarded.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	if c := s.container(r.ID); c != nil {
		c.interruptRounds()
		c.mu.Lock()
		defer c.mu.Unlock()
		c.pausedAt = time.Time{}
		// The checkpoint's client resumes: its rw-layer diff is done. The
		// pin goes after the thaw, outside the frozen window.
		defer s.unpin(ctx, c, "resumed")
		if c.thawedEarly {
			// The checkpoint already thawed it (and published
			// TaskResumed): the client's Resume that ends its checkpoint
			// succeeds without doing it twice.
			c.thawedEarly = false
			return &ptypes.Empty{}, nil
		}
		c.dropChain(ctx, "resumed without a checkpoint")
	}
	return s.TTRPCTaskService.Resume(ctx, r)
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
	criuOptions := s.criu.use(c.ownNetns)
	c.mu.Lock()
	defer c.mu.Unlock()
	// What the Pause before decided stands; without one (a client that
	// checkpoints a running task), decide now.
	var opts options.CheckpointOptions
	if r.Options != nil {
		if err := typeurl.UnmarshalTo(r.Options, &opts); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("checkpoint %s: options: %w: %w", r.ID, err, errdefs.ErrInvalidArgument))
		}
	}
	// CRIU's log and statistics land in its work dir, which the runc-v2
	// service deletes unless the caller chose one (the CRI plugin does;
	// ctr and a CRI handler with precopy's own runtime type do not): use
	// one of ours, and put both into the image, where they travel with it.
	if opts.WorkPath == "" {
		work := filepath.Join(c.bundle, "checkpoint-work")
		if err := os.RemoveAll(work); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("checkpoint %s: CRIU work dir: %w", r.ID, err))
		}
		defer os.RemoveAll(work)
		opts.WorkPath = work
		var err error
		if r, err = withOptions(r, &opts); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("checkpoint %s: %w", r.ID, err))
		}
		defer keepCRIULog(ctx, work, r.Path)
	}
	chain, report := c.takeChain()
	if report == nil {
		chain, report = s.preCopy(ctx, c, "checkpoint")
	}
	report.CRIUOptions = criuOptions
	thaw, t := c.earlyThaw(&opts)
	report.Thaw = t
	c.pausedAt = time.Time{}
	// afterDump runs once a dump the image can use is written: from then
	// on the image does not change with the container.
	afterDump := func() {
		if thaw == thawIfPinned && s.pinRootfs(ctx, c, t) {
			thaw = thawYes
		}
		if thaw == thawYes {
			s.thawEarly(ctx, c, t)
		}
	}
	if chain == nil {
		start := time.Now()
		if _, err := s.TTRPCTaskService.Checkpoint(ctx, r); err != nil {
			s.thawIfCRIUFroze(ctx, c)
			return nil, err
		}
		wall := time.Since(start)
		afterDump()
		if final, err := precopy.ReadDumpStats(opts.WorkPath); err == nil {
			final.Wall = wall
			report.Final = &final
		}
		if err := report.Write(r.Path); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("checkpoint %s: %w", r.ID, err))
		}
		return &ptypes.Empty{}, nil
	}
	defer func() {
		if err := chain.Discard(); err != nil {
			log.G(ctx).WithError(err).Warn("precopy: discard rounds")
		}
	}()
	if err := s.checkpointWithParent(ctx, c, r, &opts, chain, report, afterDump); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("checkpoint %s: %w", r.ID, err))
	}
	return &ptypes.Empty{}, nil
}

// Delete deletes a container or an exec process; a container's pending
// rounds go with it.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, err := s.TTRPCTaskService.Delete(ctx, r)
	if err != nil || r.ExecID != "" {
		return resp, err
	}
	if c := s.container(r.ID); c != nil {
		c.mu.Lock()
		s.unpin(ctx, c, "container deleted")
		c.dropChain(ctx, "container deleted")
		c.mu.Unlock()
		s.mu.Lock()
		delete(s.containers, r.ID)
		s.mu.Unlock()
	}
	return resp, nil
}

// keepCRIULog copies CRIU's log and statistics of a dump from its work
// dir into the image dir. Best effort: the image is complete without.
func keepCRIULog(ctx context.Context, work, image string) {
	for _, name := range []string{"dump.log", "stats-dump"} {
		b, err := os.ReadFile(filepath.Join(work, name))
		if err == nil {
			err = os.WriteFile(filepath.Join(image, name), b, 0o600)
		}
		if err != nil && !os.IsNotExist(err) {
			log.G(ctx).WithError(err).Warnf("precopy: keep CRIU's %s in the image", name)
		}
	}
}
