// Package checkpoints keeps a container's checkpoints as containerd
// checkpoint images: taking one the way `ctr c checkpoint --task` does,
// naming and labelling it so the newest is easy to find, listing and
// pruning them, and restoring one in the container's place.
package checkpoints

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
)

// Labels on the checkpoint images precopyctl makes. containerd lists
// images by label (`ctr images ls 'labels."io.precopy.checkpoint.container"==c1'`),
// so a container's checkpoints are found whatever their names.
const (
	// LabelContainer is the ID of the container the image checkpoints.
	LabelContainer = "io.precopy.checkpoint.container"
	// LabelTaken is when the checkpoint was asked for, UTC, RFC 3339
	// with nanoseconds: the order of a container's checkpoints.
	LabelTaken = "io.precopy.checkpoint.taken"
	// LabelLatestOf marks the alias that names a container's newest
	// checkpoint (<prefix>/<container>:latest) with the container's ID.
	LabelLatestOf = "io.precopy.checkpoint.latest-of"
)

// LatestTag is the tag of the alias that always names a container's
// newest checkpoint, so `ctr c restore c1 checkpoint/c1:latest` works.
const LatestTag = "latest"

// tagTime is the tag of a checkpoint image: its time, UTC, to the
// millisecond, so that a container's image names sort by age.
const tagTime = "20060102T150405.000Z"

// Name is the image name of container id's checkpoint asked for at t:
// <prefix>/<id>:<UTC time>, e.g. checkpoint/c1:20261207T101500.123Z.
func Name(prefix, id string, t time.Time) string {
	return fmt.Sprintf("%s/%s:%s", prefix, id, t.UTC().Format(tagTime))
}

// LatestName is the alias of container id's newest checkpoint.
func LatestName(prefix, id string) string { return fmt.Sprintf("%s/%s:%s", prefix, id, LatestTag) }

// Checkpoint is one of a container's checkpoint images.
type Checkpoint struct {
	Name      string
	Container string
	// Taken is when the checkpoint was asked for (LabelTaken).
	Taken time.Time
	Image images.Image
}

// List lists container id's checkpoints, oldest first; the latest alias
// is not among them.
func List(ctx context.Context, client *containerd.Client, id string) ([]Checkpoint, error) {
	imgs, err := client.ImageService().List(ctx, fmt.Sprintf("labels.%q==%q", LabelContainer, id))
	if err != nil {
		return nil, fmt.Errorf("checkpoints of %s: %w", id, err)
	}
	var out []Checkpoint
	for _, img := range imgs {
		c, err := fromImage(img)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	sortOldestFirst(out)
	return out, nil
}

// Get is checkpoint image name, precopyctl's or another client's (whose
// Taken is then the image's creation).
func Get(ctx context.Context, client *containerd.Client, name string) (Checkpoint, error) {
	img, err := client.ImageService().Get(ctx, name)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("checkpoint image %s: %w", name, err)
	}
	if _, ok := img.Labels[LabelTaken]; !ok {
		return Checkpoint{Name: img.Name, Taken: img.CreatedAt, Image: img}, nil
	}
	return fromImage(img)
}

func fromImage(img images.Image) (Checkpoint, error) {
	taken, err := time.Parse(time.RFC3339Nano, img.Labels[LabelTaken])
	if err != nil {
		return Checkpoint{}, fmt.Errorf("checkpoint image %s: label %s: %w", img.Name, LabelTaken, err)
	}
	return Checkpoint{Name: img.Name, Container: img.Labels[LabelContainer], Taken: taken, Image: img}, nil
}

func sortOldestFirst(cs []Checkpoint) {
	slices.SortStableFunc(cs, func(a, b Checkpoint) int {
		if c := a.Taken.Compare(b.Taken); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// Latest is container id's newest checkpoint; errdefs.ErrNotFound when it
// has none.
func Latest(ctx context.Context, client *containerd.Client, id string) (Checkpoint, error) {
	cs, err := List(ctx, client, id)
	if err != nil {
		return Checkpoint{}, err
	}
	if len(cs) == 0 {
		return Checkpoint{}, fmt.Errorf("no checkpoint of %s (images labelled %s=%s): %w", id, LabelContainer, id, errdefs.ErrNotFound)
	}
	return cs[len(cs)-1], nil
}

// Stale are the checkpoints beyond the newest keep, oldest first.
func Stale(cs []Checkpoint, keep int) []Checkpoint {
	if keep < 0 || len(cs) <= keep {
		return nil
	}
	cs = slices.Clone(cs)
	sortOldestFirst(cs)
	return cs[:len(cs)-keep]
}

// Prune removes container id's checkpoints beyond the newest keep and
// returns the names it removed. The last removal waits for containerd's
// garbage collector, so their content is gone when it returns.
func Prune(ctx context.Context, client *containerd.Client, id string, keep int) ([]string, error) {
	cs, err := List(ctx, client, id)
	if err != nil {
		return nil, err
	}
	stale := Stale(cs, keep)
	var removed []string
	for i, c := range stale {
		var opts []images.DeleteOpt
		if i == len(stale)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		if err := client.ImageService().Delete(ctx, c.Name, opts...); err != nil && !errdefs.IsNotFound(err) {
			return removed, fmt.Errorf("remove checkpoint %s: %w", c.Name, err)
		}
		removed = append(removed, c.Name)
	}
	return removed, nil
}
