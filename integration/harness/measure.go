package harness

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/images"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/precopy"
)

// Measurement is one checkpoint of the memory workload, as the workload
// and CRIU saw it.
type Measurement struct {
	Runtime string
	// Pause is the longest gap the workload perceived in its loop.
	Pause time.Duration
	// Final is CRIU's statistics of the final dump.
	Final precopy.Round
	// Wall is the checkpoint call (pause to resume).
	Wall time.Duration
	// Calls splits Wall into the client's calls.
	Calls Calls
	// Report is precopy's report, nil for the stock shim.
	Report *precopy.Report
	// Before is the workload's status before the checkpoint.
	Before workload.Status
}

// Calls is how long each client call of a checkpoint took. The
// Checkpoint call is split at the TaskCheckpointed event the shim
// publishes when its checkpoint is done: before it, the shim's dump (and
// precopy's merge); after it, the daemon's tar and content write of the
// image, the rw-layer diff and the image record. With a pausing client
// the workload is frozen from inside Pause to the end of Resume.
type Calls struct {
	Pause, Checkpoint, Resume time.Duration
	// Shim and Daemon split Checkpoint; both are zero when the event
	// did not arrive.
	Shim, Daemon time.Duration
}

// FinalDump is CRIU's freezing + frozen time of the final dump.
func (m Measurement) FinalDump() time.Duration { return m.Final.Pause() }

// Rounds is how many pre-copy rounds ran.
func (m Measurement) Rounds() int {
	if m.Report == nil {
		return 0
	}
	return len(m.Report.Rounds)
}

// CheckpointRun is one checkpoint MeasureCheckpoint makes.
type CheckpointRun struct {
	// ID is the container's, Runtime its runtime, Ref the checkpoint
	// image's name.
	ID, Runtime, Ref string
	// Args are the workload's arguments; Annotations go on the container.
	Args        []string
	Annotations map[string]string
	// LogDir, if set, gets a copy of CRIU's log of the final dump, as
	// <ID>-dump.log, for a look at where its frozen time went.
	LogDir string
}

// MeasureCheckpoint runs the workload as run says, lets it settle, and
// checkpoints it as `ctr c checkpoint --task --rw` does (Pause, Checkpoint
// with the rw layer, Resume: the same client calls), except that CRIU's
// work dir is kept so its statistics can be read: the stock shim deletes
// its own. The container is removed afterwards; the checkpoint image
// stays.
func MeasureCheckpoint(ctx context.Context, d *Daemon, run CheckpointRun) (m Measurement, err error) {
	id, runtime, ref := run.ID, run.Runtime, run.Ref
	m.Runtime = runtime
	c := d.Client()
	ctrArgs := []string{"run", "-d", "--runtime", runtime}
	for _, k := range slices.Sorted(maps.Keys(run.Annotations)) {
		ctrArgs = append(ctrArgs, "--annotation", k+"="+run.Annotations[k])
	}
	ctrArgs = append(ctrArgs, MemloadImage, id, "/"+MemloadBinary)
	if _, err := d.Ctr(ctx, append(ctrArgs, run.Args...)...); err != nil {
		return m, err
	}
	defer func() {
		ctr, lerr := c.LoadContainer(ctx, id)
		if lerr == nil {
			removeContainers(ctx, c, ctr)
		}
	}()
	status := filepath.Join(d.RootfsPath(id), "status.json")
	if _, err := workload.WaitReadable(ctx, status); err != nil {
		return m, err
	}
	if m.Before, err = d.Memload(ctx, id, "query"); err != nil {
		return m, err
	}
	time.Sleep(2 * time.Second) // let the rewriting settle into its rate
	if _, err := d.Memload(ctx, id, "reset-gap"); err != nil {
		return m, err
	}

	work, err := os.MkdirTemp("", "precopy-criu-work-")
	if err != nil {
		return m, err
	}
	defer os.RemoveAll(work)
	keepWork := func(_ context.Context, _ *containerd.Client, _ *containers.Container, _ *imagespec.Index, copts *options.CheckpointOptions) error {
		copts.WorkPath = work
		return nil
	}
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		return m, err
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		return m, err
	}
	evctx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	checkpointed, _ := c.Subscribe(evctx, `topic=="/tasks/checkpointed"`)

	start := time.Now()
	if err := task.Pause(ctx); err != nil {
		return m, fmt.Errorf("pause: %w", err)
	}
	paused := time.Now()
	_, cerr := ctr.Checkpoint(ctx, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW, keepWork, containerd.WithCheckpointTask)
	checkpointDone := time.Now()
	rerr := task.Resume(ctx)
	m.Wall = time.Since(start)
	m.Calls = Calls{Pause: paused.Sub(start), Checkpoint: checkpointDone.Sub(paused), Resume: time.Since(checkpointDone)}
	select {
	case ev := <-checkpointed:
		if at := ev.Timestamp; at.After(paused) && at.Before(checkpointDone) {
			m.Calls.Shim, m.Calls.Daemon = at.Sub(paused), checkpointDone.Sub(at)
		}
	case <-time.After(time.Second):
	}
	if cerr != nil {
		return m, fmt.Errorf("checkpoint: %w", cerr)
	}
	if rerr != nil {
		return m, fmt.Errorf("resume: %w", rerr)
	}
	after, err := d.Memload(ctx, id, "query")
	if err != nil {
		return m, err
	}
	m.Pause = after.MaxGap()
	final, err := precopy.ReadDumpStats(work)
	if err != nil {
		return m, err
	}
	m.Final = final
	if run.LogDir != "" {
		if err := copyFile(filepath.Join(work, "dump.log"), filepath.Join(run.LogDir, id+"-dump.log")); err != nil {
			return m, err
		}
	}
	if cp, err := ReadCheckpoint(ctx, c, ref); err == nil {
		m.Report = cp.Report
	}
	return m, nil
}

// Memload runs `memload <subcommand>` in container id and parses what it
// prints.
func (d *Daemon) Memload(ctx context.Context, id, subcommand string) (workload.Status, error) {
	out, err := d.Ctr(ctx, "task", "exec", "--exec-id", fmt.Sprintf("%s-%d", subcommand, time.Now().UnixNano()), id, "/"+MemloadBinary, subcommand)
	if err != nil {
		return workload.Status{}, err
	}
	return workload.ParseStatus([]byte(out))
}

// RemoveImage deletes image ref and waits for its content to go, so that
// runs do not pile checkpoints up in memory.
func (d *Daemon) RemoveImage(ctx context.Context, ref string) error {
	return d.Client().ImageService().Delete(ctx, ref, images.SynchronousDelete())
}
