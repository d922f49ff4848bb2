package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/policy"
)

// Measurement is one checkpoint of the memory workload, as the workload
// and CRIU saw it.
type Measurement struct {
	Runtime string
	// Pause is the longest gap the workload perceived in its loop.
	Pause time.Duration
	// Final is CRIU's statistics of the final dump.
	Final policy.Round
	// Wall is the checkpoint call (pause to resume).
	Wall time.Duration
	// Calls splits Wall into the client's calls, Window the frozen part.
	Calls  Calls
	Window Window
	// ImageBytes is the checkpoint image's size in the content store
	// (the blobs its index lists).
	ImageBytes int64
	// Report is precopy's report, nil for the stock shim.
	Report *precopy.Report
	// Before is the workload's status before the checkpoint.
	Before workload.Status
}

// Calls is how long each client call of a checkpoint took, and Window
// splits the time the workload was frozen (from the end of Pause, when
// it is frozen with either shim, to the end of Resume) in the order the
// client works, as `ctr c checkpoint --task --rw` does: the rw-layer
// diff, the shim's dump (runc and CRIU), the daemon's tar and content
// write of the image dir (precopy's merge of the final dump comes first
// and is in Merge), the rest (the checkpoint config, the index and image
// record, Resume). The boundaries are the commit times the content store
// records for the rw diff and the CRIU tar, and the modification time of
// CRIU's stats-dump, which CRIU writes as the dump ends. A part is zero
// when its boundary is missing.
type Calls struct {
	Pause, Checkpoint, Resume time.Duration
}

// Window is where the frozen window went; see Calls.
type Window struct {
	RWDiff, Dump, Merge, Content, Rest time.Duration
}

// Total is the whole frozen window.
func (w Window) Total() time.Duration { return w.RWDiff + w.Dump + w.Merge + w.Content + w.Rest }

// FinalDump is CRIU's freezing + frozen time of the final dump.
func (m Measurement) FinalDump() time.Duration { return m.Final.Freeze() }

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
	// BeforePause, if set, is called right before the checkpoint's Pause
	// (to start profiles of the checkpoint).
	BeforePause func()
	// QueryBefore has the workload verify its memory before the
	// checkpoint, into Measurement.Before (for a later restore to compare
	// with). Without it Before is the status file, unverified: the query
	// reads all of the workload's memory, seconds under TCG.
	QueryBefore bool
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
	if m.Before, err = workload.WaitReadable(ctx, status); err != nil {
		return m, err
	}
	if run.QueryBefore {
		if m.Before, err = d.Memload(ctx, id, "query"); err != nil {
			return m, err
		}
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
	if run.BeforePause != nil {
		run.BeforePause()
	}
	start := time.Now()
	if err := task.Pause(ctx); err != nil {
		return m, fmt.Errorf("pause: %w", err)
	}
	paused := time.Now()
	_, cerr := ctr.Checkpoint(ctx, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW, keepWork, containerd.WithCheckpointTask)
	checkpointDone := time.Now()
	rerr := task.Resume(ctx)
	m.Wall = time.Since(start)
	resumed := time.Now()
	m.Calls = Calls{Pause: paused.Sub(start), Checkpoint: checkpointDone.Sub(paused), Resume: resumed.Sub(checkpointDone)}
	if cerr != nil {
		return m, fmt.Errorf("checkpoint: %w", cerr)
	}
	if rerr != nil {
		return m, fmt.Errorf("resume: %w", rerr)
	}
	// The workload records a gap when its next iteration starts. The
	// first status it writes after the resume may come from the iteration
	// the freeze interrupted; one from a later iteration holds the gap.
	first, err := workload.WaitStatus(ctx, status, func(s workload.Status) bool { return s.WrittenAt.After(resumed) })
	if err != nil {
		return m, fmt.Errorf("workload status after the checkpoint: %w", err)
	}
	after, err := workload.WaitStatus(ctx, status, func(s workload.Status) bool { return s.Counter > first.Counter })
	if err != nil {
		return m, fmt.Errorf("workload status after the checkpoint: %w", err)
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
	var dumped time.Time
	if fi, err := os.Stat(filepath.Join(work, "stats-dump")); err == nil {
		dumped = fi.ModTime()
	}
	var merge time.Duration
	if m.Report != nil {
		merge = m.Report.FinalFlatten
	}
	m.ImageBytes, m.Window, err = frozenWindow(ctx, c, ref, paused, dumped, merge, resumed)
	return m, err
}

// frozenWindow splits the frozen window from paused to resumed of the
// checkpoint image ref (see Calls) and sums its blobs' sizes.
func frozenWindow(ctx context.Context, c *containerd.Client, ref string, paused, dumped time.Time, merge time.Duration, resumed time.Time) (int64, Window, error) {
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		return 0, Window{}, err
	}
	b, err := content.ReadBlob(ctx, c.ContentStore(), img.Target())
	if err != nil {
		return 0, Window{}, err
	}
	var index imagespec.Index
	if err := json.Unmarshal(b, &index); err != nil {
		return 0, Window{}, fmt.Errorf("checkpoint %s: index: %w", ref, err)
	}
	size := img.Target().Size
	committed := map[string]time.Time{}
	for _, d := range index.Manifests {
		size += d.Size
		if info, err := c.ContentStore().Info(ctx, d.Digest); err == nil {
			kind := d.MediaType
			if images.IsLayerType(kind) {
				kind = images.MediaTypeContainerd1RW // the client writes the rw diff as an ordinary layer
			}
			committed[kind] = info.CreatedAt
		}
	}
	// The boundaries in the client's order; a missing or out-of-order one
	// (a blob already in the store from before) leaves its part at zero.
	marks := []time.Time{paused, committed[images.MediaTypeContainerd1RW], dumped, committed[images.MediaTypeContainerd1Checkpoint], resumed}
	parts := make([]time.Duration, len(marks)-1)
	last := paused
	for i, t := range marks[1:] {
		if t.Before(last) || t.After(resumed) {
			continue
		}
		parts[i], last = t.Sub(last), t
	}
	w := Window{RWDiff: parts[0], Dump: parts[1], Content: parts[2], Rest: parts[3]}
	if merge > 0 && merge <= w.Content {
		w.Merge, w.Content = merge, w.Content-merge
	}
	return size, w, nil
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
