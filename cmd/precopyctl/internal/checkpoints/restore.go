package checkpoints

import (
	"context"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/cmd/precopyctl/internal/report"
)

// ErrTaskAlive is wrapped by Restore's error for a container whose task
// still runs (or is paused): a restore would replace a live workload.
var ErrTaskAlive = fmt.Errorf("its task is alive: %w", errdefs.ErrFailedPrecondition)

// Restore restores checkpoint c in container id's place and starts it,
// as `ctr containers restore --live [--rw]` does, with the writable layer
// when c holds one: a stopped task of id is deleted, then the container
// (with its snapshot), which is created again from the checkpoint (its
// image, spec, runtime and snapshotter) under the same ID, keeping the
// labels it had. A container already gone is created anew. The restored
// task's stdio are io's.
func Restore(ctx context.Context, client *containerd.Client, id string, c Checkpoint, io cio.Creator) (containerd.Task, error) {
	labels, err := removeStopped(ctx, client, id)
	if err != nil {
		return nil, err
	}
	index, err := report.Index(ctx, client.ContentStore(), c.Image)
	if err != nil {
		return nil, err
	}
	opts := []containerd.RestoreOpts{containerd.WithRestoreImage, containerd.WithRestoreSpec, containerd.WithRestoreRuntime}
	if hasRW(index) {
		opts = append(opts, containerd.WithRestoreRW)
	}
	if len(labels) > 0 {
		opts = append(opts, withLabels(labels))
	}
	ckpt := containerd.NewImage(client, c.Image)
	ctr, err := client.Restore(ctx, id, ckpt, opts...)
	if err != nil {
		return nil, fmt.Errorf("restore %s from %s: %w", id, c.Name, err)
	}
	task, err := ctr.NewTask(ctx, io, containerd.WithTaskCheckpoint(ckpt))
	if err != nil {
		return nil, fmt.Errorf("restore %s from %s: task: %w", id, c.Name, err)
	}
	if err := task.Start(ctx); err != nil {
		task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
		return nil, fmt.Errorf("restore %s from %s: start: %w", id, c.Name, err)
	}
	return task, nil
}

// removeStopped deletes container id's stopped task and the container
// with its snapshot, and returns the container's labels; nothing when
// there is no such container. A live task is ErrTaskAlive.
func removeStopped(ctx context.Context, client *containerd.Client, id string) (map[string]string, error) {
	ctr, err := client.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	info, err := ctr.Info(ctx)
	if err != nil {
		return nil, err
	}
	task, err := ctr.Task(ctx, nil)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return nil, err
	default:
		st, err := task.Status(ctx)
		if err != nil {
			return nil, err
		}
		if st.Status != containerd.Stopped {
			return nil, fmt.Errorf("restore %s: %w (%s): kill it first", id, ErrTaskAlive, st.Status)
		}
		if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("restore %s: delete its stopped task: %w", id, err)
		}
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("restore %s: delete the container: %w", id, err)
	}
	return info.Labels, nil
}

// hasRW says whether a checkpoint's index holds a diff of the writable
// layer (`ctr c checkpoint --rw`, WithCheckpointRW).
func hasRW(index *imagespec.Index) bool {
	for _, m := range index.Manifests {
		if m.MediaType == imagespec.MediaTypeImageLayerGzip {
			return true
		}
	}
	return false
}

// withLabels gives the restored container the labels the one it replaces
// had.
func withLabels(labels map[string]string) containerd.RestoreOpts {
	return func(context.Context, string, *containerd.Client, containerd.Image, *imagespec.Index) containerd.NewContainerOpts {
		return func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
			c.Labels = labels
			return nil
		}
	}
}
