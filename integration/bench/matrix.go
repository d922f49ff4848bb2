package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/precopy/precopy/integration/benchresults"
	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/precopy/settings"
)

// The matrix's workloads: memload's dirtying flags.
var matrixWorkloads = []struct {
	name string
	args []string
}{
	{"idle", []string{"-dirty-mibps", "0"}},
	{"low", []string{"-dirty-mibps", "16", "-hot", "0.1"}},
	{"medium", []string{"-dirty-mibps", "64", "-hot", "0.25"}},
	// Faster than CRIU dumps in the VM tier (~100-300 MiB/s) or natively.
	{"write-all", []string{"-dirty-mibps", "4096", "-hot", "1"}},
}

// The matrix's configurations: stock runc-v2, and precopy with the
// annotations it gets (a fixed number of rounds, or the adaptive policy's
// defaults).
var matrixConfigs = []struct {
	name        string
	precopy     bool
	annotations map[string]string
}{
	{"stock", false, nil},
	{"precopy-1", true, map[string]string{settings.AnnotationRounds: "1"}},
	{"precopy-3", true, map[string]string{settings.AnnotationRounds: "3"}},
	{"adaptive", true, nil},
}

// fullSizeLimit is the largest memory size measured in every cell. Larger
// sizes run the low workload on stock and adaptive only: under qemu TCG a
// 1 GiB checkpoint takes about a minute (the daemon's content write alone
// ~35 s), so all sixteen cells at 1 GiB would take the full matrix well
// past an hour.
const fullSizeLimit = 256

// matrixCell is one measured cell of the matrix.
type matrixCell struct {
	size     int
	workload int // index into matrixWorkloads
	config   int // index into matrixConfigs
}

func matrixCells(sizes []int) []matrixCell {
	var cells []matrixCell
	for _, size := range sizes {
		for w, wl := range matrixWorkloads {
			for c, cfg := range matrixConfigs {
				if size > fullSizeLimit && (wl.name != "low" || !(cfg.name == "stock" || cfg.name == "adaptive")) {
					continue
				}
				cells = append(cells, matrixCell{size, w, c})
			}
		}
	}
	return cells
}

func parseSizes(s string) ([]int, error) {
	var sizes []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 16 {
			return nil, fmt.Errorf("-sizes: %q is not a size in MiB of at least 16", f)
		}
		sizes = append(sizes, n)
	}
	return sizes, nil
}

// storageWorkload and storageConfigs are what the matrix measures again
// on precopyd's content store and snapshotter, to compare with the same
// cells on disk.
const storageWorkload = "low"

var storageConfigs = []string{"stock", "adaptive"}

// storageCells are the cells of the storage comparison at sizes.
func storageCells(sizes []int) []matrixCell {
	var cells []matrixCell
	for _, size := range sizes {
		for w, wl := range matrixWorkloads {
			for c, cfg := range matrixConfigs {
				if wl.name == storageWorkload && slices.Contains(storageConfigs, cfg.name) {
					cells = append(cells, matrixCell{size, w, c})
				}
			}
		}
	}
	return cells
}

// progress counts the matrix's checkpoints on stderr.
type progress struct {
	total, done int
	start       time.Time
}

func (p *progress) next(what string) {
	p.done++
	left := ""
	if p.done > 1 {
		per := time.Since(p.start) / time.Duration(p.done-1)
		left = fmt.Sprintf(", ~%s left", (per * time.Duration(p.total-p.done+1)).Round(time.Minute))
	}
	fmt.Fprintf(os.Stderr, "bench [%d/%d] %s (%s elapsed%s)\n", p.done, p.total, what, time.Since(p.start).Round(time.Second), left)
}

// runMatrix measures every cell runs times on containerd's own content
// store and snapshotter (disk), then the storage cells again on
// precopyd's, alternating configurations within a workload and size, and
// prints a row per checkpoint (see benchresults.Row) after "about" lines
// saying what ran where. Progress goes to stderr.
func runMatrix(ctx context.Context, sizes, storageSizes []int, runs int) error {
	if ok, why := harness.SoftDirty(ctx); !ok {
		return fmt.Errorf("%s (make bench runs in the soft-dirty VM)", why)
	}
	cells, storage := matrixCells(sizes), storageCells(storageSizes)
	for _, line := range about(sizes, storageSizes, runs, len(cells)+len(storage)) {
		fmt.Println("about " + line)
	}
	p := &progress{total: (len(cells) + len(storage)) * runs, start: time.Now()}
	if err := measureCells(ctx, benchresults.StorageDisk, cells, runs, p); err != nil {
		return err
	}
	if len(storage) > 0 {
		if err := measureCells(ctx, benchresults.StoragePrecopyd, storage, runs, p); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "bench: %d checkpoints in %s\n", p.total, time.Since(p.start).Round(time.Second))
	return nil
}

// measureCells measures cells runs times each on a containerd of its own
// whose content store and snapshotter are storage's.
func measureCells(ctx context.Context, storage string, cells []matrixCell, runs int, p *progress) (retErr error) {
	var env *harness.Env
	var err error
	if storage == benchresults.StoragePrecopyd {
		env, err = harness.SetupPrecopyd(ctx, "precopy-bench", precopydLimits)
	} else {
		env, err = harness.Setup(ctx, "precopy-bench")
	}
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, env.Close()) }()
	d := env.Daemon
	ctx = d.Context(ctx)
	for _, precopy := range []bool{false, true} {
		if _, err := measureCtr(ctx, d, fmt.Sprintf("warm-up-%v", precopy), precopy, []string{"-mib", "16"}, nil); err != nil {
			return fmt.Errorf("warm-up on %s (precopy %v): %w", storage, precopy, err)
		}
	}
	// Runs alternate configurations: run 1 of every configuration of a
	// workload and size, then run 2, so that drift in the VM spreads over
	// all of them.
	for i := 0; i < len(cells); {
		j := i
		for j < len(cells) && cells[j].size == cells[i].size && cells[j].workload == cells[i].workload {
			j++
		}
		for run := 1; run <= runs; run++ {
			for _, c := range cells[i:j] {
				wl, cfg := matrixWorkloads[c.workload], matrixConfigs[c.config]
				p.next(fmt.Sprintf("%d MiB %s %s on %s run %d/%d", c.size, wl.name, cfg.name, storage, run, runs))
				id := fmt.Sprintf("m%d-%s-%s-%s-%d", c.size, wl.name, cfg.name, storage, run)
				args := append([]string{"-mib", strconv.Itoa(c.size)}, wl.args...)
				m, err := measureCtr(ctx, d, id, cfg.precopy, args, cfg.annotations)
				if err != nil {
					return fmt.Errorf("%d MiB %s %s on %s run %d: %w", c.size, wl.name, cfg.name, storage, run, err)
				}
				fmt.Println(row(c.size, wl.name, cfg.name, storage, run, m).Line())
			}
		}
		i = j
	}
	return nil
}

// row is m as a benchresults row.
func row(size int, workload, config, storage string, run int, m harness.Measurement) benchresults.Row {
	w := m.Window
	r := benchresults.Row{
		SizeMiB: size, Workload: workload, Config: config, Storage: storage, Run: run,
		PauseMS: ms(m.Pause), FinalDumpMS: ms(m.FinalDump()), CheckpointMS: ms(m.Wall),
		ImageMiB: float64(m.ImageBytes) / (1 << 20), Rounds: m.Rounds(),
		RWDiffMS: ms(w.RWDiff), DumpMS: ms(w.Dump), MergeMS: ms(w.Merge), ContentMS: ms(w.Content), RestMS: ms(w.Rest),
		Stop: "-",
	}
	if rep := m.Report; rep != nil {
		switch {
		case rep.FellBack != "":
			r.Stop = "fell-back"
		case rep.Stop != nil:
			r.Stop = string(rep.Stop.Reason)
		case rep.Skipped != "":
			r.Stop = "skipped"
		}
	}
	return r
}

// commit is the source's commit, set by hack/bench.sh at build time.
var commit = "unknown"

// about says what the matrix measures and on what.
func about(sizes, storageSizes []int, runs, cells int) []string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	tier := "natively"
	if os.Getenv("PRECOPY_IN_VM") != "" {
		tier = "in the soft-dirty VM tier (qemu TCG, Debian's 6.1 kernel; the host kernel has no CONFIG_MEM_SOFT_DIRTY)"
	}
	var full, limited []string
	for _, s := range sizes {
		if s > fullSizeLimit {
			limited = append(limited, fmt.Sprintf("%d MiB", s))
		} else {
			full = append(full, fmt.Sprintf("%d MiB", s))
		}
	}
	lines := []string{
		fmt.Sprintf("bench matrix, %s, commit %s, measured %s", time.Now().UTC().Format("2006-01-02 15:04 MST"), commit, tier),
		fmt.Sprintf("kernel %s, %d CPUs, %s", strings.TrimSpace(string(kernel)), runtime.NumCPU(), memTotal()),
		fmt.Sprintf("%d cells x %d runs, configurations alternating; `ctr c checkpoint --task --rw` calls (Pause, Checkpoint with the rw layer, Resume) on one containerd", cells, runs),
		"sizes with every workload and configuration: " + strings.Join(full, ", "),
	}
	if len(limited) > 0 {
		lines = append(lines, "sizes with the low workload on stock and adaptive only (time): "+strings.Join(limited, ", "))
	}
	var storage []string
	for _, s := range storageSizes {
		storage = append(storage, fmt.Sprintf("%d MiB", s))
	}
	if len(storage) > 0 {
		lines = append(lines, fmt.Sprintf("storage: the cells above on containerd's own content store and overlayfs (disk); then %s, %s on %s, on a second containerd whose content store and snapshotter are precopyd's (memory)",
			strings.Join(storage, ", "), storageWorkload, strings.Join(storageConfigs, " and ")))
	}
	return lines
}

func memTotal() string {
	kib, ok := meminfoKiB("MemTotal")
	if !ok {
		return "RAM unknown"
	}
	return fmt.Sprintf("%.1f GiB RAM", float64(kib)/(1<<20))
}

// meminfoKiB is field of /proc/meminfo, in KiB.
func meminfoKiB(field string) (int64, bool) {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kib, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kib, err == nil
		}
	}
	return 0, false
}

// render turns a matrix run's output (log) into docs (dir).
func render(log, dir string) error {
	f, err := os.Open(log)
	if err != nil {
		return err
	}
	defer f.Close()
	rows, err := benchresults.ParseRows(f)
	if err != nil {
		return fmt.Errorf("%s: %w", log, err)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		return err
	}
	var lines []string
	for _, line := range strings.Split(string(b), "\n") {
		if a, ok := strings.CutPrefix(line, "about "); ok {
			lines = append(lines, a)
		}
	}
	if err := benchresults.Render(dir, rows, lines); err != nil {
		return err
	}
	fmt.Printf("bench: %d runs rendered into %s (matrix.csv, results.md, plots)\n", len(rows), dir)
	return nil
}
