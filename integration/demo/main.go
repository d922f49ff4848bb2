// Command demo shows precopy end to end on this machine: a private
// containerd with precopy's shim, the memory workload on runtime
// io.containerd.precopy.v1, a checkpoint with `ctr c checkpoint --task --rw`
// and a restore with `ctr c restore --live --rw`, and the workload's own
// account of its memory and of the pause it perceived. Everything it starts
// is removed when it ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	precopyshim "github.com/precopy/precopy/shim"
)

func main() {
	mib := flag.Int("mib", 256, "memory the workload holds, MiB")
	dirty := flag.Float64("dirty-mibps", 16, "MiB/s the workload rewrites")
	hot := flag.Float64("hot", 0.1, "fraction of its memory the workload rewrites")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *mib, *dirty, *hot); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, mib int, dirty, hot float64) (retErr error) {
	found, err := harness.CheckStack(ctx)
	if err != nil {
		return err
	}
	for _, note := range found.Notes {
		fmt.Println("note:", note)
	}
	bins, removeBins, err := harness.FindBinaries()
	defer removeBins()
	if err != nil {
		return err
	}
	d, err := harness.StartDaemon(ctx, harness.Options{ShimDirs: []string{bins.Dir}, Namespace: "precopy-demo", Env: found.CRIUEnv})
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, d.Close()) }()
	ctx = d.Context(ctx)
	if err := harness.ImportMemload(ctx, d.Client(), bins); err != nil {
		return err
	}
	step := func(what string, args ...string) error {
		start := time.Now()
		if _, err := d.Ctr(ctx, args...); err != nil {
			return err
		}
		fmt.Printf("  %-52s %8.0f ms\n", what, ms(time.Since(start)))
		return nil
	}
	status := func(id string) (workload.Status, error) {
		out, err := d.Ctr(ctx, "task", "exec", "--exec-id", fmt.Sprintf("q%d", time.Now().UnixNano()), id, "/"+harness.MemloadBinary, "query")
		if err != nil {
			return workload.Status{}, err
		}
		return workload.ParseStatus([]byte(out))
	}

	fmt.Printf("precopy demo: containerd %s, shim %s\n", d.Address, bins.Path(harness.ShimBinary))
	fmt.Printf("workload: memload holding %d MiB, rewriting %.0f MiB/s over %.0f%% of it\n", mib, dirty, hot*100)
	if ok, why := harness.SoftDirty(ctx); !ok {
		fmt.Printf("note: %s\n", why)
	}
	args := []string{"run", "-d", "--runtime", precopyshim.Runtime, harness.MemloadImage, "demo-src", "/" + harness.MemloadBinary,
		"-mib", fmt.Sprint(mib), "-dirty-mibps", fmt.Sprint(dirty), "-hot", fmt.Sprint(hot)}
	if err := step("ctr run --runtime "+precopyshim.Runtime, args...); err != nil {
		return err
	}
	if _, err := workload.WaitReadable(ctx, filepath.Join(d.RootfsPath("demo-src"), "status.json")); err != nil {
		return err
	}
	before, err := status("demo-src")
	if err != nil {
		return err
	}
	time.Sleep(time.Second)
	if _, err := d.Ctr(ctx, "task", "exec", "--exec-id", "reset", "demo-src", "/"+harness.MemloadBinary, "reset-gap"); err != nil {
		return err
	}
	if err := step("ctr c checkpoint --task --rw (one-shot)", "containers", "checkpoint", "--task", "--rw", "demo-src", "precopy.demo/checkpoint:1"); err != nil {
		return err
	}
	after, err := status("demo-src")
	if err != nil {
		return err
	}
	fmt.Printf("  pause the workload perceived during the checkpoint:  %8.0f ms\n", after.MaxGapMS)
	out, _ := d.Ctr(ctx, "images", "ls")
	fmt.Print(indent(out))
	if err := step("ctr task kill + delete the original", "task", "kill", "-s", "SIGKILL", "demo-src"); err != nil {
		return err
	}
	for d.Ctr(ctx, "task", "delete", "demo-src"); ; time.Sleep(50 * time.Millisecond) {
		if _, err := d.Ctr(ctx, "container", "delete", "demo-src"); err == nil {
			break
		}
		d.Ctr(ctx, "task", "delete", "demo-src")
	}
	if err := step("ctr c restore --live --rw", "containers", "restore", "--live", "--rw", "demo-dst", "precopy.demo/checkpoint:1"); err != nil {
		return err
	}
	restored, err := status("demo-dst")
	if err != nil {
		return err
	}
	fmt.Printf("restored workload: started %s (same as before: %v), counter %d -> %d, %d pages verified, %d bad\n",
		restored.StartedAt.Format(time.RFC3339Nano), restored.StartedAt.Equal(before.StartedAt),
		before.Counter, restored.Counter, restored.Pages, restored.BadPages)
	if err := restored.Check(); err != nil {
		return fmt.Errorf("restored memory: %w", err)
	}
	if !restored.StartedAt.Equal(before.StartedAt) || restored.Counter <= before.Counter {
		return errors.New("restored workload is not the checkpointed process image")
	}
	fmt.Println("ok: the restored workload continued with its memory intact")
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}
