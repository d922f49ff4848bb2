package checkpoints

import (
	"context"
	"errors"
	"fmt"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"

	"github.com/precopy/precopy/cmd/precopyctl/internal/report"
	"github.com/precopy/precopy/precopy"
)

// Taken is a checkpoint just taken.
type Taken struct {
	Checkpoint
	// Pause is how long the task was paused as the client saw it: from
	// its Pause to its Resume (the shim may have thawed it earlier; the
	// report's thaw says).
	Pause time.Duration
	// Bytes is the size of the image's content: CRIU's images, the
	// writable layer's diff if taken, the spec and options.
	Bytes int64
	// Report is precopy's report in the image; nil when the shim is not
	// precopy's (or the report could not be read: ReportErr).
	Report    *precopy.Report
	ReportErr error
}

// resumeTimeout bounds the Resume after a checkpoint, which runs even when
// the checkpoint's context ended: a task must not stay paused.
const resumeTimeout = time.Minute

// Take checkpoints container ctr's task into image name, leaving it
// running, as `ctr containers checkpoint --task [--rw]` does: Pause, the
// checkpoint (the writable layer's diff first, with rw, then the task's),
// Resume. The image is labelled as container's checkpoint, and the
// container's latest alias (under prefix) is moved to it. The Resume runs
// even if ctx ends meanwhile.
func Take(ctx context.Context, client *containerd.Client, ctr containerd.Container, prefix, name string, rw bool, now time.Time) (Taken, error) {
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		return Taken{}, fmt.Errorf("checkpoint %s: %w", ctr.ID(), err)
	}
	opts := []containerd.CheckpointOpts{containerd.WithCheckpointRuntime}
	if rw {
		opts = append(opts, containerd.WithCheckpointRW)
	}
	opts = append(opts, containerd.WithCheckpointTask)

	start := time.Now()
	if err := task.Pause(ctx); err != nil {
		return Taken{}, fmt.Errorf("checkpoint %s: pause: %w", ctr.ID(), err)
	}
	img, err := ctr.Checkpoint(ctx, name, opts...)
	if rerr := resume(ctx, task); rerr != nil {
		return Taken{}, errors.Join(err, fmt.Errorf("checkpoint %s: resume: %w", ctr.ID(), rerr))
	}
	taken := Taken{Pause: time.Since(start)}
	if err != nil {
		return Taken{}, fmt.Errorf("checkpoint %s: %w", ctr.ID(), err)
	}
	if taken.Checkpoint, err = label(ctx, client, img.Metadata(), ctr.ID(), now); err != nil {
		return Taken{}, err
	}
	if err := setLatest(ctx, client, prefix, taken.Image, ctr.ID()); err != nil {
		return Taken{}, err
	}
	if taken.Bytes, err = imageBytes(ctx, client, taken.Image); err != nil {
		return Taken{}, err
	}
	taken.Report, taken.ReportErr = report.FromImage(ctx, client, taken.Image)
	return taken, nil
}

// resume resumes task after a checkpoint, even if ctx ended meanwhile: a
// task must not stay paused. A task gone meanwhile needs none.
func resume(ctx context.Context, task containerd.Task) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resumeTimeout)
	defer cancel()
	if err := task.Resume(ctx); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// label marks img as container id's checkpoint asked for at taken.
func label(ctx context.Context, client *containerd.Client, img images.Image, id string, taken time.Time) (Checkpoint, error) {
	if img.Labels == nil {
		img.Labels = map[string]string{}
	}
	img.Labels[LabelContainer] = id
	img.Labels[LabelTaken] = taken.UTC().Format(time.RFC3339Nano)
	updated, err := client.ImageService().Update(ctx, img, "labels."+LabelContainer, "labels."+LabelTaken)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("label checkpoint %s: %w", img.Name, err)
	}
	return fromImage(updated)
}

// setLatest points container id's latest alias at img.
func setLatest(ctx context.Context, client *containerd.Client, prefix string, img images.Image, id string) error {
	alias := images.Image{Name: LatestName(prefix, id), Target: img.Target, Labels: map[string]string{LabelLatestOf: id}}
	is := client.ImageService()
	_, err := is.Create(ctx, alias)
	if errdefs.IsAlreadyExists(err) {
		_, err = is.Update(ctx, alias, "target", "labels."+LabelLatestOf)
	}
	if err != nil {
		return fmt.Errorf("point %s at %s: %w", alias.Name, img.Name, err)
	}
	return nil
}

// imageBytes is the size of checkpoint image img's content.
func imageBytes(ctx context.Context, client *containerd.Client, img images.Image) (int64, error) {
	index, err := report.Index(ctx, client.ContentStore(), img)
	if err != nil {
		return 0, err
	}
	n := img.Target.Size
	for _, m := range index.Manifests {
		n += m.Size
	}
	return n, nil
}
