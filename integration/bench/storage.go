package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/plugin/contentservice"
	precopyshim "github.com/precopy/precopy/shim"
)

// The storage scenarios compare where containerd keeps a checkpoint: its
// own local content store, on this machine's disk, and precopyd's memory.
// Two private containerds run side by side, one on each store (the second
// with precopyd's snapshotter too, as the README sets it up); each run
// checkpoints the memory workload on stock runc-v2 in each, alternating, as
// `ctr c checkpoint --task --rw` does, then restores it as
// `ctr c restore --live --rw` does. They need no soft-dirty: they run
// natively.
//
// write is the daemon's content write of the CRIU image: from the end of
// CRIU's dump (its stats-dump) to the image's blob committed, the tar and
// the write (harness.Window.Content). read is the daemon's read-back in the
// restore's task create: it reads the blob through the store's ReaderAt
// and unpacks it for runc (tasks service Create), before the shim starts
// CRIU, which happens in Start and is timed apart.
var storageScenarios = map[string]int{ // name: memory in MiB
	"storage-256m": 256,
	"storage-1g":   1024,
}

// storageRun is one checkpoint and restore in one store.
type storageRun struct {
	write     time.Duration // the daemon's tar and content write of the CRIU image
	restoreRW time.Duration // Restore with the rw layer (container record, rw diff applied)
	read      time.Duration // task create: the checkpoint read back and unpacked
	start     time.Duration // task start: runc restore, CRIU
	image     int64
	// precopyd only: its content writes during the checkpoint and the CPU
	// time it used over the whole checkpoint call.
	writes contentservice.WriteMetrics
	cpu    time.Duration
}

func (r storageRun) perWrite(d int64) float64 {
	if r.writes.Messages == 0 {
		return math.NaN()
	}
	return float64(d) / float64(r.writes.Messages) / 1e3
}

// store is one of the two containerds.
type store struct {
	name string
	env  *harness.Env
}

func runStorage(ctx context.Context, name string, mib, runs int, profileDir string) (retErr error) {
	local, err := harness.Setup(ctx, "precopy-bench-local")
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, local.Close()) }()
	mem, err := harness.SetupPrecopyd(ctx, "precopy-bench-precopyd", precopydLimits)
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, mem.Close()) }()
	stores := []store{{"local", local}, {"precopyd", mem}}

	args := []string{"-mib", fmt.Sprint(mib), "-dirty-mibps", "16", "-hot", "0.1"}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("bench %s: memload %s on stock runc-v2, checkpointed as `ctr c checkpoint --task --rw` and restored as `ctr c restore --live --rw`, into containerd's local content store (%s, %s) and into precopyd (content store and snapshotter), one containerd each, alternating; %s; CRIU %s; kernel %s; %d runs per store; load average %s; %s; commit %s\n",
		name, strings.Join(args, " "), local.Daemon.Dir, fsType(local.Daemon.Dir), firstLine("containerd", "--version"),
		strings.TrimPrefix(firstLine("criu", "--version"), "Version: "), strings.TrimSpace(string(kernel)), runs, loadavg(), time.Now().UTC().Format(time.RFC3339), commit)

	measure := func(s store, id string, args []string, profile *storageProfile) (storageRun, error) {
		return measureStorage(s.env.Daemon.Context(ctx), s, id, args, profile)
	}
	// Warm up both (kernel modules, CRIU's kerndat, page cache), unmeasured.
	for _, s := range stores {
		if _, err := measure(s, "warm-up-"+s.name, []string{"-mib", "16"}, nil); err != nil {
			return fmt.Errorf("warm-up (%s): %w", s.name, err)
		}
	}
	results := map[string][]storageRun{}
	for i := 1; i <= runs; i++ {
		for _, s := range stores {
			r, err := measure(s, fmt.Sprintf("bench-%d-%s", i, s.name), args, nil)
			if err != nil {
				return fmt.Errorf("run %d into %s: %w", i, s.name, err)
			}
			fmt.Printf("run=%d store=%s write_ms=%.0f read_ms=%.0f restore_rw_ms=%.0f criu_restore_ms=%.0f image_mib=%.1f%s\n",
				i, s.name, ms(r.write), ms(r.read), ms(r.restoreRW), ms(r.start), float64(r.image)/(1<<20), writeDetails(r))
			results[s.name] = append(results[s.name], r)
		}
	}
	l, p := results["local"], results["precopyd"]
	write := func(r storageRun) float64 { return ms(r.write) }
	read := func(r storageRun) float64 { return ms(r.read) }
	handler := func(r storageRun) float64 { return r.perWrite(r.writes.HandleNanos) }
	cpu := func(r storageRun) float64 { return r.perWrite(int64(r.cpu)) }
	fmt.Printf("spread: local write %s, precopyd write %s, local read %s, precopyd read %s (min-max ms); precopyd per write: handler %s µs, process CPU %s µs; load average %s\n",
		runSpread(l, write), runSpread(p, write), runSpread(l, read), runSpread(p, read), runSpread(p, handler), runSpread(p, cpu), loadavg())
	if profileDir != "" {
		if err := profileStorage(ctx, stores, args, profileDir, results); err != nil {
			return err
		}
	}
	lw, pw, lr, pr := runMedian(l, write), runMedian(p, write), runMedian(l, read), runMedian(p, read)
	fmt.Printf("scenario=%s local_write_ms=%.0f precopyd_write_ms=%.0f write_ratio=%.3f read_ratio=%.3f local_read_ms=%.0f precopyd_read_ms=%.0f precopyd_handler_us_per_write=%.1f precopyd_cpu_us_per_write=%.1f\n",
		name, lw, pw, pw/lw, pr/lr, lr, pr, runMedian(p, handler), runMedian(p, cpu))
	return nil
}

// writeDetails is where precopyd's part of a checkpoint's writes went.
func writeDetails(r storageRun) string {
	w := r.writes
	if w.Messages == 0 {
		return ""
	}
	return fmt.Sprintf(" writes=%d write_mib=%.1f handler_us_per_write=%.1f wait_us_per_write=%.1f precopyd_cpu_ms=%.0f precopyd_cpu_us_per_write=%.1f",
		w.Messages, float64(w.Bytes)/(1<<20), r.perWrite(w.HandleNanos), r.perWrite(w.WaitNanos), ms(r.cpu), r.perWrite(int64(r.cpu)))
}

// measureStorage checkpoints the workload into s's store and restores it,
// then removes the container, the restored one and the image. profile,
// if set, is taken of the checkpoint and of the restore's task create.
func measureStorage(ctx context.Context, s store, id string, args []string, profile *storageProfile) (r storageRun, err error) {
	d, p := s.env.Daemon, s.env.Precopyd
	ref := "precopy.bench/" + id + ":1"
	var before harness.PrecopydMetrics
	var cpu0 time.Duration
	if p != nil {
		if before, err = p.Metrics(ctx); err != nil {
			return r, err
		}
		if cpu0, err = harness.CPUTime(p.Pid()); err != nil {
			return r, err
		}
	}
	run := harness.CheckpointRun{ID: id, Runtime: precopyshim.RuncRuntime, Ref: ref, Args: args}
	var done func() error
	if profile != nil {
		run.BeforePause = func() { done = profile.start(ctx, s, "write", profile.writeSeconds) }
	}
	m, err := harness.MeasureCheckpoint(ctx, d, run)
	if done != nil {
		err = errors.Join(err, done())
	}
	if err != nil {
		return r, err
	}
	defer func() { err = errors.Join(err, d.RemoveImage(ctx, ref)) }()
	if m.Window.Content <= 0 {
		return r, fmt.Errorf("checkpoint %s: the daemon's write could not be told apart (window %+v)", ref, m.Window)
	}
	r.write, r.image = m.Window.Content, m.ImageBytes
	if p != nil {
		after, err := p.Metrics(ctx)
		if err != nil {
			return r, err
		}
		cpu1, err := harness.CPUTime(p.Pid())
		if err != nil {
			return r, err
		}
		a, b := after.ContentWrites, before.ContentWrites
		r.writes = contentservice.WriteMetrics{Messages: a.Messages - b.Messages, Bytes: a.Bytes - b.Bytes,
			HandleNanos: a.HandleNanos - b.HandleNanos, WaitNanos: a.WaitNanos - b.WaitNanos}
		r.cpu = cpu1 - cpu0
	}
	restored := id + "-restored"
	defer func() { err = errors.Join(err, d.RemoveContainer(ctx, restored)) }()
	err = restoreTimed(ctx, d, restored, ref, &r, profile, s)
	return r, err
}

// restoreTimed restores checkpoint ref into container id with the client
// calls `ctr c restore --live --rw` makes, timing each.
func restoreTimed(ctx context.Context, d *harness.Daemon, id, ref string, r *storageRun, profile *storageProfile, s store) error {
	c := d.Client()
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		return err
	}
	t0 := time.Now()
	ctr, err := c.Restore(ctx, id, img, containerd.WithRestoreImage, containerd.WithRestoreSpec, containerd.WithRestoreRuntime, containerd.WithRestoreRW)
	if err != nil {
		return fmt.Errorf("restore container: %w", err)
	}
	var done func() error
	if profile != nil {
		done = profile.start(ctx, s, "read", profile.readSeconds)
	}
	t1 := time.Now()
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, io.Discard, io.Discard)), containerd.WithTaskCheckpoint(img))
	t2 := time.Now()
	if done != nil {
		err = errors.Join(err, done())
	}
	if err != nil {
		return fmt.Errorf("restore task: %w", err)
	}
	t3 := time.Now()
	if err := task.Start(ctx); err != nil {
		return fmt.Errorf("start restored task: %w; containerd log:\n%s", err, d.LogTail(20))
	}
	r.restoreRW, r.read, r.start = t1.Sub(t0), t2.Sub(t1), time.Since(t3)
	return nil
}

// storageProfile takes CPU profiles and execution traces of containerd
// and, on precopyd's store, of precopyd, for a fixed time from the start of
// a checkpoint (the daemon's write is its larger part) and of a restore's
// task create (the read-back).
type storageProfile struct {
	dir                       string
	writeSeconds, readSeconds int
}

// start starts the profiles of s's processes for op and returns what waits
// for them and writes them to files.
func (sp *storageProfile) start(ctx context.Context, s store, op string, seconds int) func() error {
	type target struct {
		name string
		get  func(context.Context, string) ([]byte, error)
	}
	targets := []target{{"containerd", s.env.Daemon.DebugGet}}
	if p := s.env.Precopyd; p != nil {
		targets = append(targets, target{"precopyd", p.DebugGet})
	}
	var wg sync.WaitGroup
	errs := make([]error, 2*len(targets))
	for i, t := range targets {
		for j, kind := range []string{"profile", "trace"} {
			wg.Go(func() {
				b, err := t.get(ctx, fmt.Sprintf("/debug/pprof/%s?seconds=%d", kind, seconds))
				if err == nil {
					ext := map[string]string{"profile": "cpu.pprof", "trace": "trace"}[kind]
					err = os.WriteFile(filepath.Join(sp.dir, fmt.Sprintf("%s-%s-%s.%s", s.name, op, t.name, ext)), b, 0o644)
				}
				errs[2*i+j] = err
			})
		}
	}
	// Both profilers must have started before the operation does.
	time.Sleep(200 * time.Millisecond)
	return func() error { wg.Wait(); return errors.Join(errs...) }
}

// profileStorage checkpoints and restores once more into each store with
// profiles, each as long as the longest measured run (checkpoint call;
// task create) plus a second.
func profileStorage(ctx context.Context, stores []store, args []string, dir string, results map[string][]storageRun) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, s := range stores {
		var write, read time.Duration
		for _, r := range results[s.name] {
			write, read = max(write, r.write), max(read, r.read)
		}
		// The checkpoint call is CRIU's dump and the write; give the
		// dump as long again as the write.
		sp := &storageProfile{dir: dir, writeSeconds: int(math.Ceil((2 * write).Seconds())) + 1, readSeconds: int(math.Ceil(read.Seconds())) + 1}
		r, err := measureStorage(s.env.Daemon.Context(ctx), s, "profiled-"+s.name, args, sp)
		if err != nil {
			return fmt.Errorf("profiled run into %s: %w", s.name, err)
		}
		fmt.Printf("profiled store=%s write_ms=%.0f read_ms=%.0f (profiles of %d s and %d s in %s)%s\n",
			s.name, ms(r.write), ms(r.read), sp.writeSeconds, sp.readSeconds, dir, writeDetails(r))
	}
	return nil
}

// runMedian and runSpread are medianOf and spreadOf over f of the runs
// that have it (f is NaN where a run does not).
func runMedian(rs []storageRun, f func(storageRun) float64) float64 {
	v := valuesOf(rs, f)
	if len(v) == 0 {
		return math.NaN()
	}
	return medianOf(v)
}

func runSpread(rs []storageRun, f func(storageRun) float64) string {
	v := valuesOf(rs, f)
	if len(v) == 0 {
		return "n/a"
	}
	return spreadOf(v, "%.1f")
}

func valuesOf(rs []storageRun, f func(storageRun) float64) []float64 {
	var v []float64
	for _, r := range rs {
		if x := f(r); !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	slices.Sort(v)
	return v
}

// fsType names the file system dir is on, for the header.
func fsType(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "file system unknown"
	}
	switch st.Type {
	case 0xef53:
		return "ext4"
	case 0x01021994:
		return "tmpfs"
	case 0x58465342:
		return "xfs"
	case 0x9123683e:
		return "btrfs"
	}
	return fmt.Sprintf("file system type %#x", st.Type)
}

// firstLine is the first line a command prints: a version, for the
// header (the A/B of docs/storage runs a containerd built with a change).
func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return name + " unknown"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// loadavg is the machine's load average over 1, 5 and 15 minutes: the
// other work sharing its CPUs while the bench ran.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
