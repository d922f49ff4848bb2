package precopy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/precopy/precopy/precopy/policy"
)

// Dumper writes one checkpoint's final dump: the runtime call the client
// asked for, with its options, into the checkpoint's ImageDir, CRIU's
// statistics into its WorkDir. parent, if not "", is the rounds' image
// dir relative to ImageDir; "" is a one-shot dump.
type Dumper interface {
	Dump(ctx context.Context, parent string) error
}

// Checkpoint is one checkpoint request as the engine sees it.
type Checkpoint struct {
	// ImageDir is where the image goes (the client's); WorkDir is CRIU's
	// work dir of the final dump, where its statistics are read.
	ImageDir, WorkDir string
	// Exit: the dump stops the container, so it cannot be taken twice.
	Exit bool
	// KeepCRIULog copies CRIU's log and statistics from WorkDir into the
	// image, where they travel with it (for a WorkDir deleted after).
	KeepCRIULog bool
	Dumper      Dumper
	// AfterDump, if set, runs once a dump the image will hold is written,
	// the container still frozen: from then on the image does not change
	// with the container, so the caller may thaw it early. It says
	// whether the container runs again; then a failure after it is not
	// redone one-shot, as a dump now would not match the writable layer
	// the client diffs.
	AfterDump func(ctx context.Context) (thawed bool)
}

// Checkpoint does the final dump of cp on top of the rounds (one-shot when
// they hold no image), flattens it into one image set and writes the
// report into it. A final dump or flatten on the rounds that fails is
// redone one-shot while the container is still frozen, except in exit
// mode or after an early thaw. A failed dump never leaves the container
// frozen unless the client had paused it. The rounds are discarded.
func (e *Engine) Checkpoint(ctx context.Context, r *Rounds, cp Checkpoint) (*Report, error) {
	defer r.discard(e.Log)
	e.checkpoints++
	f := &finalDump{e: e, cp: cp, report: r.Report}
	if err := f.run(ctx, r); err != nil {
		e.Runtime.RecoverFailedDump(ctx)
		e.dropKept(fmt.Sprintf("checkpoint %d failed", e.checkpoints))
		return nil, err
	}
	if e.Incremental {
		f.report.Incremental = e.incremental(r, f)
	}
	if err := f.report.Write(cp.ImageDir); err != nil {
		return nil, err
	}
	if cp.KeepCRIULog {
		keepCRIULog(e.Log, cp.WorkDir, cp.ImageDir)
	}
	return f.report, nil
}

// incremental says how checkpoint f used the kept image r started from,
// and keeps f's image for the next checkpoint if it can be a parent: only
// the image of a final dump on rounds (see incremental.go).
func (e *Engine) incremental(r *Rounds, f *finalDump) *Incremental {
	inc := &Incremental{Number: e.checkpoints, Parent: r.parent, NoParent: r.noParent, Unshare: r.unshare}
	if inc.Parent == nil && inc.NoParent == "" {
		inc.NoParent = "one-shot: pre-copy did not run"
	}
	if r.parent != nil && len(f.report.Rounds) > 0 {
		inc.PagesFromParent = f.report.Rounds[0].PagesSkippedParent
		inc.BytesSaved = int64(inc.PagesFromParent) * policy.PageSize
	}
	switch {
	case f.cp.Exit:
		inc.NotKept = "the checkpoint stopped the task"
	case !f.onRounds:
		// No parent: CRIU neither reset dirty tracking nor recorded when
		// the dump ran, so it cannot be the next dump's parent.
		inc.NotKept = "a one-shot checkpoint cannot be a parent"
		e.dropKept(fmt.Sprintf("checkpoint %d was one-shot", e.checkpoints))
		e.noParent = fmt.Sprintf("checkpoint %d was one-shot", e.checkpoints)
	default:
		e.keep(f.cp.ImageDir, e.checkpoints, f.report.Final.Start, inc)
		if !inc.Kept {
			e.noParent = fmt.Sprintf("checkpoint %d was not kept: %s", e.checkpoints, inc.NotKept)
		}
	}
	return inc
}

// finalDump is one checkpoint's final dump in progress.
type finalDump struct {
	e      *Engine
	cp     Checkpoint
	report *Report
	// thawed: AfterDump ran the container again.
	thawed bool
	// onRounds: the image is the final dump on the rounds, flattened (not
	// one-shot, nor redone one-shot).
	onRounds bool
}

func (f *finalDump) run(ctx context.Context, r *Rounds) error {
	if !r.PreCopied() {
		return f.oneShot(ctx)
	}
	err := f.dumpOnRounds(ctx, r)
	switch {
	case err == nil:
		f.onRounds = true
		return nil
	case f.cp.Exit:
		return fmt.Errorf("%w (the checkpoint stops the container: not redone)", err)
	case f.thawed:
		return fmt.Errorf("%w (thawed after the dump: not redone)", err)
	}
	// A leave-running dump of a task the client did not pause, whose CRIU
	// died, left the cgroup frozen; a dump of it now would leave it so.
	// One whose CRIU died having thawed the task the client paused let it
	// run: a dump now would hold memory newer than what the client took
	// at its pause (its diff of the writable layer, which ctr takes
	// between Pause and Checkpoint), and the restored task would see a
	// rootfs older than its memory.
	if f.e.Runtime.RecoverFailedDump(ctx) {
		return fmt.Errorf("%w (CRIU died after thawing the paused container, which ran on: not redone, as a dump now would be newer than what the client took at its pause)", err)
	}
	f.report.FellBack = err.Error()
	f.e.Log.Warnf("precopy: checkpoint redone one-shot: %v", err)
	if err := emptyDir(f.cp.ImageDir); err != nil {
		return fmt.Errorf("one-shot dump after %s: %w", f.report.FellBack, err)
	}
	if err := f.oneShot(ctx); err != nil {
		return fmt.Errorf("%w (redone one-shot after %s)", err, f.report.FellBack)
	}
	return nil
}

// oneShot is the final dump without rounds.
func (f *finalDump) oneShot(ctx context.Context) error {
	if _, err := f.dump(ctx, ""); err != nil {
		return err
	}
	f.report.Final.ImageBytes = dirBytes(f.cp.ImageDir)
	return nil
}

// dumpOnRounds is the final dump on top of r's image, flattened.
func (f *finalDump) dumpOnRounds(ctx context.Context, r *Rounds) error {
	// CRIU (through runc) wants the parent relative to the image dir.
	parent, err := filepath.Rel(f.cp.ImageDir, r.image)
	if err != nil {
		return fmt.Errorf("parent of %s: %w", f.cp.ImageDir, err)
	}
	measured, err := f.dump(ctx, parent)
	if err != nil {
		return fmt.Errorf("final dump on pre-copied rounds: %w", err)
	}
	if err := f.flattenDeferred(r); err != nil {
		return err
	}
	f.afterThaw("flatten of the final dump with the last round", "report")
	final := f.report.Final
	if measured {
		// In a dump, CRIU writes the pages inside memdump_time
		// (memwrite_time is a part of it, unlike in a pre-dump).
		f.e.finalFixed = max(final.Freeze()-final.MemDump, 0)
	}
	// The rounds are discarded after this, so the final flatten may take
	// over the last round's pages instead of copying them, where the page
	// layout allows.
	start := f.e.Now()
	res, err := f.e.Flatten(f.cp.ImageDir, r.dir)
	if res.TakeoverLinkFailed && !f.e.warnedCopiedFlatten {
		f.e.warnedCopiedFlatten = true
		f.e.Log.Warnf("precopy: the final flatten copies the rounds' pages instead of taking them over (%s); put containerd's checkpoint temp dir ($XDG_RUNTIME_DIR or $TMPDIR) on the filesystem of the rounds (its state dir, or precopy's rounds-dir; see README)", res.TakeoverRefused)
	}
	if err != nil {
		// The image still points at rounds about to be discarded (and
		// may need pages the takeover rewrote): it must not be handed out.
		return fmt.Errorf("flatten final image: %w", err)
	}
	f.report.FinalFlatten = f.e.Now().Sub(start)
	recordFlatten(final, res)
	if res.TakeoverRefused != "" && !res.TakeoverLinkFailed {
		f.e.Log.Infof("precopy: the final flatten copied %d pages of the last round (took over %d): %s", res.PagesCopied, res.PagesTakenOver, res.TakeoverRefused)
	}
	final.ImageBytes = dirBytes(f.cp.ImageDir)
	f.e.Log.Infof("precopy: checkpoint done: %d rounds, final freeze %s (predicted %s), %d pages, flatten %s",
		len(f.report.Rounds), final.Freeze(), f.report.Stop.PredictedFreeze, final.PagesWritten, f.report.FinalFlatten)
	return nil
}

// flattenDeferred runs the rounds' flattens that waited for the final
// dump (Engine.deferFlattens), oldest first, each resolving one level, so
// that the final flatten resolves one level too, taking over the last
// round's pages as it does when the rounds were flattened before: CRIU
// wrote the final dump on the chain, and neither reads it now.
func (f *finalDump) flattenDeferred(r *Rounds) error {
	if len(r.pending) == 0 {
		return nil
	}
	if !f.thawed && f.report.Trigger == TriggerPause {
		f.e.Log.Infof("precopy: the flattens of rounds %v run inside the freeze: the checkpoint did not thaw early", r.pending)
	}
	for len(r.pending) > 0 {
		i := r.pending[0]
		if err := f.e.flattenNext(r); err != nil {
			// The final dump's parent chain may have lost pages to the
			// takeover: the image must not be handed out.
			return fmt.Errorf("after the final dump: %w", err)
		}
		f.report.Rounds[i-1].FlattenAfterDump = true
		f.afterThaw(fmt.Sprintf("flatten of round %d", i))
	}
	return nil
}

// afterThaw records work done once the container ran again, if it did.
func (f *finalDump) afterThaw(work ...string) {
	if f.thawed && f.report.Thaw != nil {
		f.report.Thaw.AfterThaw = append(f.report.Thaw.AfterThaw, work...)
	}
}

// dump runs the final dump on parent and records it as the report's
// final, then runs AfterDump. measured says whether CRIU's statistics
// were read (a failed read only costs the report its figures).
func (f *finalDump) dump(ctx context.Context, parent string) (measured bool, _ error) {
	start := f.e.Now()
	if err := f.cp.Dumper.Dump(ctx, parent); err != nil {
		return false, err
	}
	wall := f.e.Now().Sub(start)
	if f.cp.AfterDump != nil && !f.thawed {
		f.thawed = f.cp.AfterDump(ctx)
	}
	final, err := f.e.Stats(f.cp.WorkDir)
	if err != nil {
		f.e.Log.Warnf("precopy: final dump statistics: %v", err)
	}
	final.Start, final.Wall = start, wall
	f.report.Final = &final
	return err == nil, nil
}

// emptyDir removes what a failed dump left in dir, keeping dir.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// maxCRIULogBytes bounds what keepCRIULog copies of CRIU's log: a final
// dump's log at runc's level is a few MiB at most.
const maxCRIULogBytes = 256 << 20

// keepCRIULog copies CRIU's log and statistics of a dump from its work
// dir into the image dir, following no symlink in either. Best effort:
// the image is complete without.
func keepCRIULog(log Logger, work, image string) {
	for _, name := range []string{"dump.log", "stats-dump"} {
		f, _, err := openRegular(filepath.Join(work, name), maxCRIULogBytes)
		if err == nil {
			err = writeInDir(image, name, f)
			f.Close()
		}
		if err != nil && !os.IsNotExist(err) {
			log.Warnf("precopy: keep CRIU's %s in the image: %v", name, err)
		}
	}
}
