// Package shim is precopy's task service: containerd's runc-v2 task
// service with the calls a checkpoint goes through (Create, including
// restore, Pause, Resume, Checkpoint, Delete) routed through one type, so the
// pre-copy engine can hook into them. Every other call goes straight to the
// runc-v2 service. This package is the only one that knows containerd's
// task API.
package shim

import (
	"context"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
)

// Service wraps containerd's runc-v2 task service.
type Service struct {
	// TTRPCTaskService is the runc-v2 task service; calls Service does not
	// override are served by it unchanged.
	taskAPI.TTRPCTaskService
}

// New wraps inner, the runc-v2 task service of this shim process.
func New(inner taskAPI.TTRPCTaskService) *Service {
	return &Service{TTRPCTaskService: inner}
}

// RegisterTTRPC registers the wrapper, not the inner service: the inner
// service's own RegisterTTRPC would serve the task API without the hooks.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

// Create creates a container, or restores one when r.Checkpoint is set.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "restore": r.Checkpoint != ""}).Debug("precopy: create")
	return s.TTRPCTaskService.Create(ctx, r)
}

// Pause freezes a container or process.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	log.G(ctx).WithField("id", r.ID).Debug("precopy: pause")
	return s.TTRPCTaskService.Pause(ctx, r)
}

// Resume thaws a container.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	log.G(ctx).WithField("id", r.ID).Debug("precopy: resume")
	return s.TTRPCTaskService.Resume(ctx, r)
}

// Checkpoint dumps a container into r.Path.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "path": r.Path}).Debug("precopy: checkpoint")
	return s.TTRPCTaskService.Checkpoint(ctx, r)
}

// Delete deletes a container or an exec process.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "exec": r.ExecID}).Debug("precopy: delete")
	return s.TTRPCTaskService.Delete(ctx, r)
}
