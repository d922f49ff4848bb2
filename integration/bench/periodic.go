package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
	precopyshim "github.com/precopy/precopy/shim"
)

// periodic is a scenario of repeated checkpoints of one container: the
// workload checkpointed checkpoints times, with gap of running between
// the end of one checkpoint and the start of the next, once with
// io.precopy.incremental on and once off, runs times, the order
// alternating: odd runs start with the series without incremental, even
// ones with it. The VM's state drifts over a run (CRIU's tar and gzip
// execs for the container's tmpfs mounts, most of a final dump's freeze
// besides its pages, took 141-161 ms a pair in the first series of a run
// and 113-156 in the second, 13fd014), so a series that always ran first
// would carry that drift into every comparison with the other; odd runs
// put the incremental series, whose ratios the last line reports, second,
// where a one-run bench measures it after the drift. Each
// incremental series ends with the workload killed (SIGKILL) and its last
// checkpoint restored by `precopyctl restore`.
type periodic struct {
	checkpoints int
	gap         time.Duration
}

// periodicPoint is one checkpoint of a series, from its report.
type periodicPoint struct {
	// pages CRIU wrote for it: every round's and the final dump's.
	pages uint64
	// preCopy is the rounds' time, freeze the final dump's.
	preCopy, freeze time.Duration
	// pause is the client's, Pause to Resume.
	pause  time.Duration
	report *precopy.Report
	// unwrittenKiB is the page cache not yet on disk (meminfo's Dirty and
	// Writeback) when the Pause returned, the container frozen for its
	// final dump: the writeback the kernel does during it.
	unwrittenKiB int64
}

// recovery is the restore at the end of an incremental series: from the
// task's death (its exit as containerd recorded it) to the restored task
// running (precopyctl restore returned), and how old the restored memory
// was at the death.
type recovery struct {
	took, lost time.Duration
	verified   bool
}

func runPeriodic(ctx context.Context, name string, sc scenario, runs int) (retErr error) {
	if ok, why := harness.SoftDirty(ctx); !ok {
		return fmt.Errorf("%s (incremental checkpoints need pre-copy: make bench runs in the soft-dirty VM)", why)
	}
	env, err := harness.Setup(ctx, "precopy-bench")
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, env.Close()) }()
	d := env.Daemon
	ctx = d.Context(ctx)
	p := sc.periodic
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("bench %s: memload %s on precopy's shim, checkpointed %d times as `ctr c checkpoint --task --rw` does, %s of running between two, io.precopy.incremental off and on, the order alternating from run to run (off first in odd runs), %d runs each; kernel %s; %s; commit %s\n",
		name, strings.Join(sc.args, " "), p.checkpoints, p.gap, runs, strings.TrimSpace(string(kernel)), time.Now().UTC().Format(time.RFC3339), commit)
	if err := checkDirMounts(d, sc.fsType); err != nil {
		return err
	}
	// The first dump after boot pays module autoload and CRIU's kerndat,
	// and the first of this size the guest's first touch of as much
	// memory: the series' first checkpoint, every ratio's denominator,
	// took 11.3 s in round 1 where the next series' took 6.0-6.4 s (VM,
	// tmpfs, ac36c9a), with a 16 MiB warm-up. So the warm-up is the
	// series' own workload.
	if _, err := measureCtr(ctx, d, "warm-up", true, sc.args, nil); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var on, off [][]periodicPoint
	var recoveries []recovery
	for i := 1; i <= runs; i++ {
		for _, incremental := range seriesOrder(i) {
			id := fmt.Sprintf("periodic-%d-incremental-%v", i, incremental)
			series, rec, err := periodicSeries(ctx, env, id, incremental, sc.args, p)
			if err != nil {
				return fmt.Errorf("run %d (incremental %v): %w", i, incremental, err)
			}
			for k, pt := range series {
				fmt.Printf("run=%d incremental=%v checkpoint=%d pages=%d precopy_ms=%.0f freeze_ms=%.0f pause_ms=%.0f unwritten_at_freeze_mib=%.0f%s\n",
					i, incremental, k+1, pt.pages, ms(pt.preCopy), ms(pt.freeze), ms(pt.pause), float64(pt.unwrittenKiB)/1024, periodicDetails(pt.report))
			}
			if incremental {
				fmt.Printf("run=%d recovery_ms=%.0f lost_ms=%.0f verified=%v\n", i, ms(rec.took), ms(rec.lost), rec.verified)
				on, recoveries = append(on, series), append(recoveries, rec)
			} else {
				off = append(off, series)
			}
		}
	}
	pagesOn, timeOn, freezeOn := laterOverFirst(on)
	pagesOff, timeOff, freezeOff := laterOverFirst(off)
	var took []float64
	for _, r := range recoveries {
		took = append(took, ms(r.took))
	}
	r := func(v []float64) string { return spreadOf(v, "%.3f") }
	fmt.Printf("spread: checkpoints 2-%d over the first, incremental on: pages %s, pre-copy time %s, freeze %s; off: pages %s, pre-copy time %s, freeze %s; recovery %s ms (min-max)\n",
		p.checkpoints, r(pagesOn), r(timeOn), r(freezeOn), r(pagesOff), r(timeOff), r(freezeOff), spreadOf(took, "%.0f"))
	fmt.Printf("off: pages_ratio=%.3f precopy_time_ratio=%.3f freeze_ratio=%.3f\n", medianOf(pagesOff), medianOf(timeOff), medianOf(freezeOff))
	fmt.Printf("scenario=%s pages_ratio=%.3f precopy_time_ratio=%.3f freeze_ratio=%.3f recovery_ms=%.0f\n",
		name, medianOf(pagesOn), medianOf(timeOn), medianOf(freezeOn), medianOf(took))
	return nil
}

// seriesOrder is the incremental setting of run i's two series, in the
// order they run: off first in odd runs, on first in even ones.
func seriesOrder(i int) []bool {
	if i%2 == 1 {
		return []bool{false, true}
	}
	return []bool{true, false}
}

// periodicSeries runs the workload in container id and checkpoints it
// p.checkpoints times; with incremental, then kills it and restores the
// last checkpoint.
func periodicSeries(ctx context.Context, env *harness.Env, id string, incremental bool, args []string, p *periodic) (_ []periodicPoint, _ recovery, retErr error) {
	d := env.Daemon
	mode := "off"
	if incremental {
		mode = "on"
	}
	run := []string{"run", "-d", "--runtime", precopyshim.Runtime, "--annotation", settings.AnnotationIncremental + "=" + mode, harness.MemloadImage, id, "/" + harness.MemloadBinary}
	if _, err := d.Ctr(ctx, append(run, args...)...); err != nil {
		return nil, recovery{}, err
	}
	var refs []string
	defer func() {
		retErr = errors.Join(retErr, d.RemoveContainer(ctx, id))
		for _, ref := range refs {
			d.RemoveImage(ctx, ref)
		}
	}()
	if _, err := workload.WaitReadable(ctx, d.RootfsPath(id)+"/status.json"); err != nil {
		return nil, recovery{}, err
	}
	var series []periodicPoint
	for k := 1; k <= p.checkpoints; k++ {
		select {
		case <-ctx.Done():
			return nil, recovery{}, ctx.Err()
		case <-time.After(p.gap):
		}
		ref := fmt.Sprintf("precopy.bench/%s:%d", id, k)
		pause, unwritten, err := checkpointLikeCtr(ctx, d.Client(), id, ref)
		if err != nil {
			return nil, recovery{}, fmt.Errorf("checkpoint %d: %w", k, err)
		}
		refs = append(refs, ref)
		var keep []string
		if *logDir != "" {
			keep = []string{"dump.log"}
		}
		cp, err := harness.ReadCheckpoint(ctx, d.Client(), ref, keep...)
		if err != nil {
			return nil, recovery{}, err
		}
		r, err := cp.RequireReport(ref)
		if err != nil {
			return nil, recovery{}, err
		}
		if *logDir != "" {
			// The final dump's CRIU log, which the shim copied into the
			// image: where its freeze went.
			if err := os.WriteFile(filepath.Join(*logDir, fmt.Sprintf("%s-%d-dump.log", id, k)), cp.Files["dump.log"], 0o644); err != nil {
				return nil, recovery{}, err
			}
		}
		pt := periodicPoint{preCopy: r.PreCopy, pause: pause, report: r, unwrittenKiB: unwritten}
		for _, rd := range r.Rounds {
			pt.pages += rd.PagesWritten
		}
		if r.Final != nil {
			pt.pages += r.Final.PagesWritten
			pt.freeze = r.Final.Freeze()
		}
		series = append(series, pt)
		// Only the newest image is kept: a 1 GiB one each otherwise.
		if len(refs) > 1 {
			if err := d.RemoveImage(ctx, refs[0]); err != nil {
				return nil, recovery{}, err
			}
			refs = refs[1:]
		}
	}
	if !incremental {
		return series, recovery{}, nil
	}
	rec, err := killAndRestore(ctx, env, id, refs[len(refs)-1], series[len(series)-1].report)
	return series, rec, err
}

// checkpointLikeCtr checkpoints container id into image ref with the
// client calls `ctr c checkpoint --task --rw` makes, and returns the
// client's pause (Pause to the end of Resume) and the page cache not yet
// written back when the Pause returned (KiB).
func checkpointLikeCtr(ctx context.Context, c *containerd.Client, id, ref string) (time.Duration, int64, error) {
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		return 0, 0, err
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := task.Pause(ctx); err != nil {
		return 0, 0, fmt.Errorf("pause: %w", err)
	}
	dirty, _ := meminfoKiB("Dirty")
	writeback, _ := meminfoKiB("Writeback")
	_, cerr := ctr.Checkpoint(ctx, ref, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW, containerd.WithCheckpointTask)
	rerr := task.Resume(ctx)
	return time.Since(start), dirty + writeback, errors.Join(cerr, rerr)
}

// killAndRestore kills container id's workload, waits for containerd to
// record its exit, and restores checkpoint ref with `precopyctl restore`
// in its place, as precopyctl checkpoint --restore-on-exit does (without
// its grace for a user's delete); then has the workload verify its memory.
func killAndRestore(ctx context.Context, env *harness.Env, id, ref string, r *precopy.Report) (recovery, error) {
	d := env.Daemon
	ctr, err := d.Client().LoadContainer(ctx, id)
	if err != nil {
		return recovery{}, err
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		return recovery{}, err
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		return recovery{}, err
	}
	if err := syscall.Kill(int(task.Pid()), syscall.SIGKILL); err != nil {
		return recovery{}, err
	}
	st := <-exited
	if err := st.Error(); err != nil {
		return recovery{}, err
	}
	cmd := exec.CommandContext(ctx, env.Bins.Path(harness.PrecopyctlBinary), "--address", d.Address, "--namespace", d.Namespace, "restore", id, ref)
	if out, err := cmd.CombinedOutput(); err != nil {
		return recovery{}, fmt.Errorf("precopyctl restore: %w: %s", err, out)
	}
	rec := recovery{took: time.Since(st.ExitTime())}
	if r.Final != nil {
		rec.lost = st.ExitTime().Sub(r.Final.Start)
	}
	status, err := d.Memload(ctx, id, "query")
	if err != nil {
		return rec, fmt.Errorf("restored workload: %w", err)
	}
	rec.verified = status.Check() == nil
	return rec, nil
}

// periodicDetails says how a checkpoint of a series went: its rounds,
// why they stopped, and what it took from its parent.
func periodicDetails(r *precopy.Report) string {
	s := fmt.Sprintf(" rounds=%d", len(r.Rounds))
	for _, rd := range r.Rounds {
		s += fmt.Sprintf(" round%d=[written=%d skipped_parent=%d wall=%.0f flatten=%.0f", rd.Index, rd.PagesWritten, rd.PagesSkippedParent, ms(rd.Wall), ms(rd.Flatten))
		if rd.FlattenTakenOver+rd.FlattenCopied > 0 {
			s += fmt.Sprintf(" taken_over=%d copied=%d", rd.FlattenTakenOver, rd.FlattenCopied)
		}
		if rd.FlattenRangeShifts > 0 {
			s += fmt.Sprintf(" range_shifts=%d", rd.FlattenRangeShifts)
		}
		if rd.FlattenAfterDump {
			s += " flatten_after_final_dump"
		}
		// Pages the load dirtied during the round: after an incremental
		// round 1, the dirty rate the policy decides on.
		if rd.DirtiedAfter > 0 {
			s += fmt.Sprintf(" dirtied=%d dirtied_after=%.0f", rd.Dirtied, ms(rd.DirtiedAfter))
		}
		if rd.FlattenCopyReason != "" {
			s += fmt.Sprintf(" copied_because=%q", rd.FlattenCopyReason)
		}
		s += "]"
	}
	if r.Stop != nil {
		s += fmt.Sprintf(" stop=%s predicted_ms=%.0f", r.Stop.Reason, ms(r.Stop.PredictedFreeze))
	}
	// The final freeze's parts: what the pages cost (memdump) against the
	// rest (freezing, the parasite, files, tmpfs), to tell a larger
	// delta from a dearer dump.
	if f := r.Final; f != nil {
		s += fmt.Sprintf(" final=[written=%d freezing=%.0f frozen=%.0f memdump=%.0f wall=%.0f flatten=%.0f taken_over=%d copied=%d range_shifts=%d]",
			f.PagesWritten, ms(f.Freezing), ms(f.Frozen), ms(f.MemDump), ms(f.Wall), ms(r.FinalFlatten), f.FlattenTakenOver, f.FlattenCopied, f.FlattenRangeShifts)
		if f.FlattenCopyReason != "" {
			s += fmt.Sprintf(" final_copied_because=%q", f.FlattenCopyReason)
		}
	}
	if r.Skipped != "" {
		s += fmt.Sprintf(" skipped=%q", r.Skipped)
	}
	if inc := r.Incremental; inc != nil {
		parent := 0
		if inc.Parent != nil {
			parent = inc.Parent.Number
		}
		s += fmt.Sprintf(" parent=%d from_parent=%d kept=%v keep_ms=%.1f unshare_ms=%.1f", parent, inc.PagesFromParent, inc.Kept, ms(inc.Keep), ms(inc.Unshare))
		if inc.NotKept != "" {
			s += fmt.Sprintf(" not_kept=%q", inc.NotKept)
		}
	}
	if t := r.Thaw; t != nil {
		s += fmt.Sprintf(" thaw_early=%v", t.Early)
	}
	return s
}

// laterOverFirst are, for each series, every later checkpoint's pages,
// pre-copy time and freeze over the first's.
func laterOverFirst(all [][]periodicPoint) (pages, preCopy, freeze []float64) {
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	for _, s := range all {
		first := s[0]
		for _, pt := range s[1:] {
			pages = append(pages, ratio(float64(pt.pages), float64(first.pages)))
			preCopy = append(preCopy, ratio(float64(pt.preCopy), float64(first.preCopy)))
			freeze = append(freeze, ratio(float64(pt.freeze), float64(first.freeze)))
		}
	}
	return pages, preCopy, freeze
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Sorted(slices.Values(v))
	if n := len(v); n%2 == 1 {
		return v[n/2]
	} else {
		return (v[n/2-1] + v[n/2]) / 2
	}
}

// spreadOf is v's min-max, each in format.
func spreadOf(v []float64, format string) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf(format+"-"+format, slices.Min(v), slices.Max(v))
}
