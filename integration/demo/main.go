// Command demo shows precopy end to end on this machine: a private
// containerd with precopy's shim and containerd's stock runc-v2 shim side by
// side, the memory workload checkpointed with `ctr c checkpoint --task --rw`
// on each, the pause the workload itself perceived for both, precopy's
// report (rounds, predicted and measured final freeze), and a restore with
// `ctr c restore --live --rw` whose memory the workload verifies. `make
// demo` runs it in the soft-dirty VM when this kernel cannot pre-copy.
// Everything it starts is removed when it ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/precopy/settings"
	precopyshim "github.com/precopy/precopy/shim"
)

func main() {
	mib := flag.Int("mib", 256, "memory the workload holds, MiB")
	dirty := flag.Float64("dirty-mibps", 16, "MiB/s the workload rewrites")
	hot := flag.Float64("hot", 0.1, "fraction of its memory the workload rewrites")
	precopyd := flag.Bool("precopyd", false, "run containerd on precopyd's memory-backed content store and snapshotter (make demo-precopyd)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *mib, *dirty, *hot, *precopyd); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type demo struct {
	d    *harness.Daemon
	args []string
}

// demoPrecopyd holds the demo's checkpoints (three of up to 256 MiB) and
// the workload image's and containers' snapshots.
var demoPrecopyd = harness.PrecopydOptions{ContentLimit: 2 << 30, SnapshotLimit: 512 << 20}

func run(ctx context.Context, mib int, dirty, hot float64, precopyd bool) (retErr error) {
	setup := func() (*harness.Env, error) { return harness.Setup(ctx, "precopy-demo") }
	if precopyd {
		setup = func() (*harness.Env, error) { return harness.SetupPrecopyd(ctx, "precopy-demo", demoPrecopyd) }
	}
	env, err := setup()
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, env.Close()) }()
	for _, note := range env.Notes {
		fmt.Println("note:", note)
	}
	d := env.Daemon
	ctx = d.Context(ctx)
	fmt.Printf("precopy demo: private containerd at %s\n", d.Address)
	if env.Precopyd != nil {
		fmt.Printf("storage: precopyd at %s serves containerd's content store and snapshotter from memory; precopy's shim asks it to pin writable layers\n", env.Precopyd.Socket)
	}
	fmt.Printf("workload: memload holding %d MiB, rewriting %g MiB/s over %g%% of it\n", mib, dirty, hot*100)
	if ok, why := harness.SoftDirty(ctx); !ok {
		fmt.Printf("note: %s: checkpoints are one-shot here\n", why)
	}
	x := demo{d: d, args: []string{"-mib", fmt.Sprint(mib), "-dirty-mibps", fmt.Sprint(dirty), "-hot", fmt.Sprint(hot)}}

	fmt.Printf("\n1. one-shot, stock runc-v2 (%s)\n", precopyshim.RuncRuntime)
	stock, err := x.checkpoint(ctx, "stock", precopyshim.RuncRuntime)
	if err != nil {
		return err
	}
	fmt.Printf("\n2. precopy (%s)\n", precopyshim.Runtime)
	pc, err := x.checkpoint(ctx, "precopy", precopyshim.Runtime)
	if err != nil {
		return err
	}
	before := pc.Before
	if err := x.showReport(ctx, "precopy.demo/precopy:1"); err != nil {
		return err
	}
	fmt.Printf("\n2b. precopy with early thaw (annotation %s=%s: the container runs again once the final dump is written)\n",
		settings.AnnotationEarlyThaw, settings.EarlyThawForce)
	thawed, err := x.checkpointAnnotated(ctx, "precopy-thaw", precopyshim.Runtime,
		map[string]string{settings.AnnotationEarlyThaw: string(settings.EarlyThawForce)})
	if err != nil {
		return err
	}
	if err := x.showReport(ctx, "precopy.demo/precopy-thaw:1"); err != nil {
		return err
	}

	fmt.Printf("\n3. restore of the precopy checkpoint\n")
	if err := x.step(ctx, "ctr c restore --live --rw", "containers", "restore", "--live", "--rw", "precopy-restored", "precopy.demo/precopy:1"); err != nil {
		return err
	}
	restored, err := x.d.Memload(ctx, "precopy-restored", "query")
	if err != nil {
		return err
	}
	fmt.Printf("   restored workload: same process image: %v, counter %d -> %d, %d pages verified, %d bad\n",
		restored.StartedAt.Equal(before.StartedAt), before.Counter, restored.Counter, restored.Pages, restored.BadPages)
	if err := restored.Check(); err != nil {
		return fmt.Errorf("restored memory: %w", err)
	}
	if !restored.StartedAt.Equal(before.StartedAt) || restored.Counter <= before.Counter {
		return errors.New("restored workload is not the checkpointed process image")
	}
	fmt.Printf("\nresult: pause the workload perceived: one-shot %.0f ms, precopy %.0f ms (%.2f×), precopy with early thaw %.0f ms (%.2f×); CRIU's final dump: %.0f ms vs %.0f ms (%.2f×); %d rounds; restore verified\n",
		ms(stock.Pause), ms(pc.Pause), float64(pc.Pause)/float64(stock.Pause),
		ms(thawed.Pause), float64(thawed.Pause)/float64(stock.Pause),
		ms(stock.FinalDump()), ms(pc.FinalDump()), float64(pc.FinalDump())/float64(stock.FinalDump()), pc.Rounds())
	return nil
}

// checkpoint runs the workload in container id on runtime, checkpoints it
// as precopy.demo/<id>:1, and returns what was measured.
func (x demo) checkpoint(ctx context.Context, id, runtime string) (harness.Measurement, error) {
	return x.checkpointAnnotated(ctx, id, runtime, nil)
}

// checkpointAnnotated is checkpoint with annotations on the container.
func (x demo) checkpointAnnotated(ctx context.Context, id, runtime string, annotations map[string]string) (harness.Measurement, error) {
	m, err := harness.MeasureCheckpoint(ctx, x.d, harness.CheckpointRun{ID: id, Runtime: runtime, Ref: "precopy.demo/" + id + ":1", Args: x.args, Annotations: annotations, QueryBefore: true})
	if err != nil {
		return m, err
	}
	fmt.Printf("   checkpoint (pause, checkpoint --rw, resume)  %7.0f ms\n", ms(m.Wall))
	fmt.Printf("   pause the workload perceived:               %7.0f ms\n", ms(m.Pause))
	fmt.Printf("   CRIU final dump froze it:                   %7.0f ms\n", ms(m.FinalDump()))
	return m, nil
}

// showReport prints precopy's report from the checkpoint's image.
func (x demo) showReport(ctx context.Context, ref string) error {
	report, err := harness.CheckpointReport(ctx, x.d.Client(), ref)
	if err != nil {
		return err
	}
	if t := report.Thaw; t != nil {
		if t.Early {
			fmt.Printf("   thawed %.0f ms after the pause, right after the final dump (%s)\n", ms(t.ThawedAt.Sub(t.FrozenAt)), t.Reason)
		} else {
			fmt.Printf("   frozen until the client's resume: %s\n", t.Reason)
		}
	}
	if !report.PreCopied {
		fmt.Printf("   one-shot: %s\n", report.Skipped)
		return nil
	}
	for _, r := range report.Rounds {
		fmt.Printf("   round %d: %6d pages written, %6d unchanged since the last round, froze %4.0f ms, took %5.0f ms\n",
			r.Index, r.PagesWritten, r.PagesSkippedParent, ms(r.Freeze()), ms(r.Wall))
	}
	fmt.Printf("   stopped: %s; predicted final freeze %.0f ms\n", report.Stop.Reason, ms(report.Stop.PredictedFreeze))
	if f := report.Final; f != nil {
		fmt.Printf("   final dump: %d pages written, %d from the rounds, froze %.0f ms; flatten %.0f ms\n",
			f.PagesWritten, f.PagesSkippedParent, ms(f.Freeze()), ms(report.FinalFlatten))
	}
	return nil
}

func (x demo) step(ctx context.Context, what string, args ...string) error {
	start := time.Now()
	if _, err := x.d.Ctr(ctx, args...); err != nil {
		return err
	}
	fmt.Printf("   %-40s %7.0f ms\n", what, ms(time.Since(start)))
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
