//go:build linux

package shim

import (
	"context"
	"fmt"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"

	"github.com/precopy/precopy/precopy"
)

// runcHandle is what the shim does with a runc handle of its own: the
// runc-v2 service keeps its handles private, and has no pre-dump.
type runcHandle interface {
	PreDump(ctx context.Context, id string, d precopy.Dirs) error
	// Frozen says whether the container's cgroup is frozen.
	Frozen(ctx context.Context, id string) (bool, error)
	Freeze(ctx context.Context, id string) error
	Thaw(ctx context.Context, id string) error
}

// taskRuntime is a container's runtime as the engine uses it: the runc-v2
// service for its processes and status, a runc handle of the shim's own
// for pre-dumps and for putting back the freezer a dead CRIU left. Its calls
// come from the engine, under the container's mu.
type taskRuntime struct {
	s *Service
	c *container
}

func (rt *taskRuntime) runc() (runcHandle, error) {
	return rt.s.newRunc(rt.c.bundle, rt.c.namespace)
}

func (rt *taskRuntime) PreDump(ctx context.Context, d precopy.Dirs) error {
	r, err := rt.runc()
	if err != nil {
		return err
	}
	if err := r.PreDump(ctx, rt.c.id, d); err != nil {
		// The round's work dir goes with the failed rounds: what CRIU
		// logged (no space left, say) must be in the report's reason.
		return withCRIUReason(err, d.Work)
	}
	return nil
}

func (rt *taskRuntime) Pids(ctx context.Context) ([]int, error) { return rt.s.pids(ctx, rt.c.id) }

// pids are the processes of container id, as the runc-v2 service lists
// them.
func (s *Service) pids(ctx context.Context, id string) ([]int, error) {
	resp, err := s.TTRPCTaskService.Pids(ctx, &taskAPI.PidsRequest{ID: id})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	pids := make([]int, len(resp.Processes))
	for i, p := range resp.Processes {
		pids[i] = int(p.Pid)
	}
	return pids, nil
}

// RecoverFailedDump puts the container back as the client left it after
// a CRIU dump that failed. A CRIU that died mid-dump leaves behind:
//
//   - a frozen cgroup: CRIU freezes the cgroup to seize the tasks; killed
//     before it had them all, it leaves it frozen. When containerd holds
//     the task running, it is thawed.
//   - a thawed cgroup under a client's pause: once CRIU has seized every
//     task (ptrace keeps them stopped) it thaws the cgroup, and puts the
//     freezer back as it found it only at its end (criu/seize.c). Killed
//     in between, its tasks run again while containerd holds them paused,
//     and the client's Resume fails ("container not paused"). When
//     containerd holds the task paused, it is frozen again.
//   - its network lock (lock.go).
//
// The container's calls are serialised (mu), so no other dump runs.
func (rt *taskRuntime) RecoverFailedDump(ctx context.Context) (ranWhilePaused bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	l := log.G(ctx).WithField("id", rt.c.id)
	st, err := rt.s.TTRPCTaskService.State(ctx, &taskAPI.StateRequest{ID: rt.c.id})
	if err != nil {
		return false
	}
	if (st.Status == apitask.Status_RUNNING || st.Status == apitask.Status_PAUSED) && st.Pid > 0 {
		removeCRIUNetworkLocks(l, int(st.Pid))
	}
	wantFrozen := st.Status == apitask.Status_PAUSED
	if !wantFrozen && st.Status != apitask.Status_RUNNING {
		return false
	}
	r, err := rt.runc()
	if err == nil {
		var frozen bool
		if frozen, err = r.Frozen(ctx, rt.c.id); err == nil && frozen != wantFrozen {
			ranWhilePaused = wantFrozen
			if wantFrozen {
				err = r.Freeze(ctx, rt.c.id)
				if err == nil {
					l.Warn("precopy: froze again the container the client had paused, which a failed CRIU dump left running")
				}
			} else if err = r.Thaw(ctx, rt.c.id); err == nil {
				l.Warn("precopy: thawed the container a failed CRIU dump left frozen")
			}
		}
	}
	if err != nil {
		l.WithError(err).Errorf("precopy: after a failed CRIU dump the container may not be %s as containerd holds it, and checking or changing its freezer failed", st.Status)
	}
	return ranWhilePaused
}

// taskDump is one checkpoint's final dump through the runc-v2 service:
// the client's request with its options, and the parent the engine gives.
type taskDump struct {
	svc      taskAPI.TTRPCTaskService
	id, path string
	opts     *options.CheckpointOptions
}

func (d *taskDump) Dump(ctx context.Context, parent string) error {
	opts := proto.Clone(d.opts).(*options.CheckpointOptions)
	opts.ParentPath = parent
	any, err := typeurl.MarshalAnyToProto(opts)
	if err != nil {
		return fmt.Errorf("checkpoint options: %w", err)
	}
	if _, err = d.svc.Checkpoint(ctx, &taskAPI.CheckpointTaskRequest{ID: d.id, Path: d.path, Options: any}); err != nil {
		return withCRIUReason(errgrpc.ToNative(err), opts.WorkPath)
	}
	return nil
}

// namespaceOf is the containerd namespace of a request.
func namespaceOf(ctx context.Context) (string, error) {
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		return "", fmt.Errorf("no namespace in request")
	}
	return ns, nil
}
