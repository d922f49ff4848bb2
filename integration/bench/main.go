// Command bench compares checkpoint pauses of the memory workload under
// containerd's stock runc-v2 shim (one-shot) and precopy, on one private
// containerd, alternating the two, and prints per run and, as its last
// line, the medians:
//
//	scenario=<name> stock_pause_ms=… precopy_pause_ms=… pause_ratio=… stock_final_dump_ms=… precopy_final_dump_ms=… final_dump_ratio=… rounds=…
//
// pause is the workload's own longest loop gap, final dump CRIU's freezing
// + frozen time of the last dump. The storage scenarios (storage.go)
// compare containerd's local content store with precopyd instead, ending
//
//	scenario=<name> local_write_ms=… precopyd_write_ms=… write_ratio=… read_ratio=… …
//
// The periodic-* scenarios checkpoint one container repeatedly,
// incremental on and off (periodic.go), and end with
//
//	scenario=<name> pages_ratio=… precopy_time_ratio=… freeze_ratio=… recovery_ms=…
//
// the medians of checkpoints 2 to 5 over the first of an incremental
// series (pages CRIU wrote, the rounds' time, the final freeze), and of
// the time from the workload's death to its last checkpoint restored and
// running. It measures; it asserts nothing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/precopy/settings"
	precopyshim "github.com/precopy/precopy/shim"
)

// scenario is a workload (the memload flags) and the annotations
// precopy's container gets (the stock one gets none).
type scenario struct {
	args        []string
	annotations map[string]string
	// cri: checkpoint through containerd's CRI plugin (CheckpointContainer,
	// as the kubelet), not as ctr does.
	cri bool
	// precopyd: containerd's content store and snapshotter are a
	// precopyd's (memory-backed), for both shims; precopy's shim asks it
	// to pin the writable rootfs and thaws right after the final dump.
	precopyd bool
	// periodic: checkpoint one container again and again, incremental
	// on and off (periodic.go), instead of stock against precopy.
	periodic *periodic
	// fsType, when set, is the file system containerd's state dir (the
	// rounds) and temp dir must be on, one mount of it; the bench stops
	// otherwise. hack/bench.sh gives a scenario named *-ext4 the VM's
	// ext4 scratch disk (PRECOPY_VM_SCRATCH=ext4, integration/vm/run.sh).
	fsType string
}

// precopydLimits hold a 1 GiB scenario's images (one per checkpoint
// until the bench removes it) and the workload image's snapshots.
var precopydLimits = harness.PrecopydOptions{ContentLimit: 3 << 30, SnapshotLimit: 512 << 20}

// scenarios are the workloads the bench knows.
var scenarios = map[string]scenario{
	// Repeated checkpoints of the 1 GiB low-dirtying workload, each
	// incremental on the one before or not.
	"periodic-low-dirty-1g": {args: []string{"-mib", "1024", "-dirty-mibps", "16", "-hot", "0.1"}, periodic: &periodic{checkpoints: 5, gap: 20 * time.Second}},
	"low-dirty-256m":        {args: []string{"-mib", "256", "-dirty-mibps", "16", "-hot", "0.1"}},
	"low-dirty-1g":          {args: []string{"-mib", "1024", "-dirty-mibps", "16", "-hot", "0.1"}},
	// Rewrites all of its memory faster than CRIU dumps it.
	"write-all-256m": {args: []string{"-mib", "256", "-dirty-mibps", "4096", "-hot", "1"}},
	// Both through the CRI plugin: stock runc-v2 and precopy's shim as
	// runtime_path of a runc-v2 handler (install path (a) in the README),
	// in pods with a network namespace of their own, as most Kubernetes
	// pods have (a host-network pod has no network for CRIU to lock).
	"cri-low-dirty-256m": {args: []string{"-mib", "256", "-dirty-mibps", "16", "-hot", "0.1"}, cri: true},
	// Both shims on precopyd's memory-backed content store and
	// snapshotter; precopy thaws early on a pinned writable layer.
	"low-dirty-256m-precopyd": {args: []string{"-mib", "256", "-dirty-mibps", "16", "-hot", "0.1"}, precopyd: true},
	"low-dirty-1g-precopyd":   {args: []string{"-mib", "1024", "-dirty-mibps", "16", "-hot", "0.1"}, precopyd: true},
	// A writable layer of 256 MiB (a file gzip cannot shrink) beside
	// 64 MiB of memory: what a client that diffs the rw layer inside the
	// pause (ctr, the bench's client) pays for it, and what a pin of it
	// costs (or why it is not pinned).
	"rw-layer-256m": {args: []string{"-mib", "64", "-dirty-mibps", "4", "-hot", "0.1", "-rootfs-mib", "256"}},
	// precopy thaws the container right after its final dump (opted in:
	// the workload's rootfs is writable).
	"low-dirty-256m-early-thaw": {
		args:        []string{"-mib", "256", "-dirty-mibps", "16", "-hot", "0.1"},
		annotations: map[string]string{settings.AnnotationEarlyThaw: string(settings.EarlyThawForce)},
	},
	// periodic-low-dirty-1g with the rounds and containerd's temp dir on
	// ext4 (the VM's scratch disk), not tmpfs: what a disk file system
	// changes in the flattens' takeover.
	"periodic-low-dirty-1g-ext4": {
		args:     []string{"-mib", "1024", "-dirty-mibps", "16", "-hot", "0.1"},
		periodic: &periodic{checkpoints: 5, gap: 20 * time.Second},
		fsType:   "ext4",
	},
}

var (
	logDir *string
	native *bool
)

func main() {
	closeInheritedFiles()
	scenario := flag.String("scenario", "low-dirty-256m", "one of: "+strings.Join(names(), ", "))
	runs := flag.Int("runs", 3, "checkpoints per configuration (per cell with -matrix)")
	logDir = flag.String("logs", "", "copy CRIU's log of each final dump into this dir")
	native = flag.Bool("native", false, "measure on this kernel even if it cannot track dirty memory: precopy's checkpoints are then one-shot, with early thaw (make bench BENCH_NATIVE=1)")
	matrix := flag.Bool("matrix", false, "measure the full matrix (sizes x workloads x configurations), a row per checkpoint")
	sizes := flag.String("sizes", "64,256,1024", "-matrix: memory sizes in MiB")
	storageSizes := flag.String("storage-sizes", "256", "-matrix: memory sizes in MiB measured again on precopyd's content store and snapshotter (low workload, stock and adaptive); \"\" for none")
	profile := flag.String("profile", "", "storage scenarios: after the measured runs, checkpoint and restore once more into each store with CPU profiles and execution traces of containerd and precopyd, written into this dir")
	renderLog := flag.String("render", "", "render this -matrix output into -out (CSV, markdown table, plots); measures nothing")
	out := flag.String("out", "docs/benchmarks", "-render: output dir")
	flag.Parse()
	if *renderLog != "" {
		if err := render(*renderLog, *out); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *matrix {
		sz, err := parseSizes(*sizes)
		var ssz []int
		if err == nil && *storageSizes != "" {
			ssz, err = parseSizes(*storageSizes)
		}
		if err != nil || *runs < 1 {
			fmt.Fprintf(os.Stderr, "bench: %v (runs %d)\n", err, *runs)
			os.Exit(2)
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := runMatrix(ctx, sz, ssz, *runs); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *logDir != "" {
		if err := os.MkdirAll(*logDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -logs:", err)
			os.Exit(2)
		}
		if os.Getenv("PRECOPY_IN_VM") == "1" {
			// The guest writes the host's files only in a working
			// directory under /tmp or /run (integration/vm/run.sh).
			fmt.Fprintf(os.Stderr, "bench: in the VM, CRIU logs in %s reach the host only if it is inside a working directory under /tmp or /run\n", *logDir)
		}
	}
	if mib, ok := storageScenarios[*scenario]; ok && *runs >= 1 {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := runStorage(ctx, *scenario, mib, *runs, *profile); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	sc, ok := scenarios[*scenario]
	if !ok || *runs < 1 {
		fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (have %s) or runs < 1\n", *scenario, strings.Join(names(), ", "))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	runScenario := run
	if sc.periodic != nil {
		runScenario = runPeriodic
	}
	if err := runScenario(ctx, *scenario, sc, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func names() []string {
	var n []string
	for k := range scenarios {
		n = append(n, k)
	}
	for k := range storageScenarios {
		n = append(n, k)
	}
	slices.Sort(n)
	return n
}

func run(ctx context.Context, name string, sc scenario, runs int) (retErr error) {
	softDirty, why := harness.SoftDirty(ctx)
	if !softDirty && !*native {
		return fmt.Errorf("%s (make bench runs in the soft-dirty VM; -native measures one-shot checkpoints here)", why)
	}
	var env *harness.Env
	var err error
	switch {
	case sc.cri:
		env, err = harness.SetupCRI(ctx, "precopy-bench", criHandlers)
	case sc.precopyd:
		env, err = harness.SetupPrecopyd(ctx, "precopy-bench", precopydLimits)
	default:
		env, err = harness.Setup(ctx, "precopy-bench")
	}
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, env.Close()) }()
	d := env.Daemon
	ctx = d.Context(ctx)
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	criuVersion := "unknown"
	if out, err := exec.Command("criu", "--version").Output(); err == nil {
		criuVersion = strings.TrimPrefix(strings.SplitN(string(out), "\n", 2)[0], "Version: ")
	}
	cri := "false"
	if sc.cri {
		cri = "true (pods with their own network namespace)"
	}
	tier := "pre-copy (soft-dirty)"
	if !softDirty {
		tier = "native, no soft-dirty: precopy is one-shot with early thaw"
	}
	fmt.Printf("bench %s: memload %s; precopy annotations %v; CRI %s; precopyd content store and snapshotter %v; kernel %s (%s); CRIU %s; %d runs per configuration, alternating; %s; commit %s\n",
		name, strings.Join(sc.args, " "), sc.annotations, cri, sc.precopyd, strings.TrimSpace(string(kernel)), tier, criuVersion, runs, time.Now().UTC().Format(time.RFC3339), commit)

	if err := checkDirMounts(d, sc.fsType); err != nil {
		return err
	}

	measure := func(id string, precopy bool, args []string) (harness.Measurement, error) {
		return measureCtr(ctx, d, id, precopy, args, sc.annotations)
	}
	if sc.cri {
		cri, err := d.CRI()
		if err != nil {
			return err
		}
		defer cri.Close()
		measure = func(id string, precopy bool, args []string) (harness.Measurement, error) {
			spec := harness.MemloadPodSpec{Name: id, Handler: criStockHandler, Args: args, PodNetwork: true}
			if precopy {
				spec.Handler, spec.ContainerAnnotations = criPrecopyHandler, sc.annotations
			}
			return harness.MeasureCRICheckpoint(ctx, d, cri, spec)
		}
	}

	// The first dump after boot pays kernel-module autoload (conntrack
	// netlink, x_tables, nf_tables) and CRIU's kerndat probe: warm both
	// shims up on a small workload first, unmeasured.
	for _, precopy := range []bool{false, true} {
		if _, err := measure(fmt.Sprintf("warm-up-%v", precopy), precopy, []string{"-mib", "16"}); err != nil {
			return fmt.Errorf("warm-up (precopy %v): %w", precopy, err)
		}
	}

	var stock, pc []harness.Measurement
	for i := 1; i <= runs; i++ {
		for _, precopy := range []bool{false, true} {
			runtime := precopyshim.RuncRuntime
			if precopy {
				runtime = precopyshim.Runtime
			}
			id := fmt.Sprintf("bench-%d-%s", i, strings.ReplaceAll(runtime, ".", "-"))
			m, err := measure(id, precopy, sc.args)
			if err != nil {
				return fmt.Errorf("run %d on %s: %w", i, runtime, err)
			}
			fmt.Printf("run=%d runtime=%s pause_ms=%.0f final_dump_ms=%.0f checkpoint_ms=%.0f rounds=%d%s\n",
				i, m.Runtime, ms(m.Pause), ms(m.FinalDump()), ms(m.Wall), m.Rounds(), details(m))
			if precopy {
				pc = append(pc, m)
			} else {
				stock = append(stock, m)
			}
		}
	}
	sp, pp := median(stock, pause), median(pc, pause)
	sf, pf := median(stock, finalDump), median(pc, finalDump)
	fmt.Printf("spread: stock pause %s, precopy pause %s, stock final dump %s, precopy final dump %s (min-max ms)\n",
		spread(stock, pause), spread(pc, pause), spread(stock, finalDump), spread(pc, finalDump))
	fmt.Printf("scenario=%s stock_pause_ms=%.0f precopy_pause_ms=%.0f pause_ratio=%.3f stock_final_dump_ms=%.0f precopy_final_dump_ms=%.0f final_dump_ratio=%.3f rounds=%.0f\n",
		name, sp, pp, pp/sp, sf, pf, pf/sf, median(pc, rounds))
	return nil
}

// checkDirMounts prints, once, which file system containerd's state dir
// (precopy's rounds, in the bundles) and temp dir (the checkpoint's
// image) are on, so that a figure says where it was measured; and when
// fsType is set, fails unless both are on one mount of that type.
func checkDirMounts(d *harness.Daemon, fsType string) error {
	fmt.Printf("bench: %s\n", d.DescribeDirMounts())
	if fsType == "" {
		return nil
	}
	state, temp, err := d.DirMounts()
	if err != nil {
		return err
	}
	if state.FSType != fsType || state.ID != temp.ID {
		return fmt.Errorf("this scenario measures containerd's state and temp dirs on one %s mount, they are on %s and %s (make bench gives a *-%s scenario the VM's scratch disk; natively, set %s to a dir on %s)",
			fsType, state.FSType, temp.FSType, fsType, harness.ContainerdDirEnv, fsType)
	}
	return nil
}

// details says where a run's time went: the final dump's CRIU phases and,
// for precopy, each round and the policy's decision.
func details(m harness.Measurement) string {
	f := m.Final
	s := fmt.Sprintf(" final=[freezing=%.0f frozen=%.0f memdump=%.0f memwrite=%.0f written=%d skipped_parent=%d]",
		ms(f.Freezing), ms(f.Frozen), ms(f.MemDump), ms(f.MemWrite), f.PagesWritten, f.PagesSkippedParent)
	c, w := m.Calls, m.Window
	s += fmt.Sprintf(" calls=[pause=%.0f checkpoint=%.0f resume=%.0f] frozen=[rw_diff=%.0f dump=%.0f merge=%.0f content=%.0f rest=%.0f] image_mib=%.1f",
		ms(c.Pause), ms(c.Checkpoint), ms(c.Resume), ms(w.RWDiff), ms(w.Dump), ms(w.Merge), ms(w.Content), ms(w.Rest), float64(m.ImageBytes)/(1<<20))
	r := m.Report
	if r == nil {
		return s
	}
	for _, rd := range r.Rounds {
		s += fmt.Sprintf(" round%d=[pause=%.0f wall=%.0f written=%d skipped_parent=%d]",
			rd.Index, ms(rd.Freeze()), ms(rd.Wall), rd.PagesWritten, rd.PagesSkippedParent)
	}
	if r.Stop != nil {
		s += fmt.Sprintf(" stop=%s predicted_ms=%.0f", r.Stop.Reason, ms(r.Stop.PredictedFreeze))
	}
	s += fmt.Sprintf(" final_flatten_ms=%.0f", ms(r.FinalFlatten))
	if t := r.Thaw; t != nil {
		s += fmt.Sprintf(" thaw=[early=%v pinned=%v pin_ms=%.1f]", t.Early, t.Pinned, ms(t.PinCost))
	}
	if r.FellBack != "" {
		s += fmt.Sprintf(" fell_back=%q", r.FellBack)
	}
	return s
}

// measureCtr checkpoints the workload as `ctr c checkpoint --task --rw`
// does, on stock runc-v2 or precopy, and removes the image.
func measureCtr(ctx context.Context, d *harness.Daemon, id string, precopy bool, args []string, annotations map[string]string) (harness.Measurement, error) {
	cr := harness.CheckpointRun{ID: id, Runtime: precopyshim.RuncRuntime, Ref: "precopy.bench/" + id + ":1", Args: args, LogDir: *logDir}
	if precopy {
		cr.Runtime, cr.Annotations = precopyshim.Runtime, annotations
	}
	m, err := harness.MeasureCheckpoint(ctx, d, cr)
	if err != nil {
		return m, err
	}
	return m, d.RemoveImage(ctx, cr.Ref)
}

// The CRI scenarios' runtime handlers: stock runc-v2, and precopy's shim
// in its place (runtime type io.containerd.runc.v2, so that the CRI plugin
// sends runc's checkpoint options and packs CRIU's statistics).
const (
	criStockHandler   = "runc"
	criPrecopyHandler = "precopy-runc"
)

func criHandlers(b harness.Binaries) []harness.CRIHandler {
	return []harness.CRIHandler{
		{Name: criStockHandler, RuntimeType: precopyshim.RuncRuntime, RuncOptions: true},
		{Name: criPrecopyHandler, RuntimeType: precopyshim.RuncRuntime, RuntimePath: b.Path(harness.ShimBinary),
			RuncOptions: true, Annotations: []string{settings.AnnotationPrefix + "*"}},
	}
}

func pause(m harness.Measurement) float64     { return ms(m.Pause) }
func finalDump(m harness.Measurement) float64 { return ms(m.FinalDump()) }
func rounds(m harness.Measurement) float64    { return float64(m.Rounds()) }

func values(ms []harness.Measurement, f func(harness.Measurement) float64) []float64 {
	v := make([]float64, len(ms))
	for i, m := range ms {
		v[i] = f(m)
	}
	slices.Sort(v)
	return v
}

func median(ms []harness.Measurement, f func(harness.Measurement) float64) float64 {
	return medianOf(values(ms, f))
}

func spread(ms []harness.Measurement, f func(harness.Measurement) float64) string {
	return spreadOf(values(ms, f), "%.0f")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// closeInheritedFiles keeps the files this process inherited beyond its
// stdio from the programs it starts. Run as `flock LOCK make bench`, it
// holds flock's descriptor of the lock file: containerd and its shims would
// inherit it, and CRIU refuses to dump a process holding a file lock it was
// not told of (the harness's CRIU probe fails with "Dumping FAILED").
func closeInheritedFiles() {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range fds {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
