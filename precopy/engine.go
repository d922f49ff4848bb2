// Package precopy is the pre-copy engine. It owns a container's
// checkpoint from its first round to its report: rounds of CRIU pre-dump
// on the running container, each copying only what was dirtied since the
// last and each flattened into one image set while the container runs,
// until the policy (precopy/policy) says the final dump will be short
// enough; then, once the client has the container frozen, the final dump
// on top of the rounds, its flatten into one ordinary image set, a one-shot
// dump where that fails, and the report written into the image.
//
// It imports nothing from containerd: it reaches the runtime through
// Runtime and Dumper, which the shim implements with containerd's runc-v2
// task service, so it is tested with fakes and recorded CRIU statistics.
// An Engine serves one container; its caller serialises the calls.
package precopy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/precopy/precopy/precopy/imagechain"
	"github.com/precopy/precopy/precopy/policy"
)

// Runtime is the container's runtime as the engine uses it.
type Runtime interface {
	// PreDump copies the running container's memory with CRIU's
	// pre-dump into d.Image (statistics into d.Work); the container runs
	// on. d.Parent, if not "", is the previous round's image dir relative
	// to d.Image: only pages dirtied since then are copied.
	PreDump(ctx context.Context, d Dirs) error
	// Pids are the container's processes: the engine reads their memory
	// size and soft-dirty pages from /proc.
	Pids(ctx context.Context) ([]int, error)
	// RecoverFailedDump puts the container back as the client left it
	// (running, or paused) after a dump that failed: a killed CRIU can
	// leave its cgroup frozen, thawed under a client's pause, or its
	// network locked. It says whether the container ran although the
	// client held it paused (a CRIU that died having thawed the cgroup):
	// its memory then moved on from where the client paused it.
	RecoverFailedDump(ctx context.Context) (ranWhilePaused bool)
}

// Dirs are one CRIU dump's directories.
type Dirs struct {
	Image, Work string
	// Parent is the parent image dir relative to Image, or "".
	Parent string
}

// StatsReader reads the statistics CRIU left in a dump's work dir.
type StatsReader func(workDir string) (policy.Round, error)

// Flattener makes an image dir stand alone, resolving its parent link,
// whose chain must stay within the dir holding the rounds. The engine
// never reads the parent again (it removes it after a flatten, and the
// whole rounds dir after a failed one), so a Flattener may consume it
// (imagechain.FlattenConsuming).
type Flattener func(dir, within string) (imagechain.Result, error)

// Logger takes the engine's log lines (containerd's log entry has these
// methods; the engine does not import it).
type Logger interface {
	Infof(format string, args ...any)
	Warnf(format string, args ...any)
}

// Engine runs one container's checkpoints.
type Engine struct {
	Runtime Runtime
	// Policy is the container's stop rule.
	Policy policy.Config
	// Mode is the container's pre-copy mode, for the report.
	Mode string
	// Dir holds the rounds, each pre-copy in a dir of its own; it should
	// be on tmpfs, on the filesystem of the final dump's image dir (see
	// README). The engine creates it.
	Dir string
	// Stats, Flatten, Now and Log are CRIU's statistics reader, the
	// flattener, the clock and the log; New sets the real ones, tests
	// replace them.
	Stats   StatsReader
	Flatten Flattener
	Now     func() time.Time
	Log     Logger
	// Incremental keeps each leave-running checkpoint's memory image, of
	// at most KeepBudget bytes (0: no limit), so that the next
	// checkpoint's first round writes only the pages dirtied since
	// (io.precopy.incremental; see incremental.go).
	Incremental bool
	KeepBudget  uint64

	// finalFixed is the part of this container's last final dump that did
	// not copy memory (tmpfs mounts, namespaces, the network lock): the
	// policy's default for it is for any container, this is measured, and
	// the next checkpoint's rounds plan with it.
	finalFixed time.Duration
	// warnedCopiedFlatten: the log said once that the final flatten
	// copies the rounds' pages rather than taking them over.
	warnedCopiedFlatten bool
	// checkpoints counts the task's checkpoints. kept is the last one's
	// memory image, the next pre-copy's parent (Incremental); nil when
	// there is none, and noParent says why.
	checkpoints int
	kept        *keptImage
	noParent    string
}

// New is an engine for the container rt runs, with rounds in dir.
func New(rt Runtime, cfg policy.Config, mode, dir string, log Logger) *Engine {
	return &Engine{
		Runtime: rt, Policy: cfg, Mode: mode, Dir: dir, Log: log,
		Stats: ReadDumpStats, Flatten: flattenConsuming, Now: time.Now,
	}
}

// flattenConsuming flattens dir, taking its parent's pages over; the
// images are untrusted input, so the chain must stay within the rounds'
// dir.
func flattenConsuming(dir, within string) (imagechain.Result, error) {
	return imagechain.FlattenConsuming(dir, imagechain.Within(within))
}

// minRoundsTime is the least time worth starting pre-copy with under a
// caller's deadline: about one first round of a mid-sized container.
const minRoundsTime = 2 * time.Second

// Trigger is the call that ran pre-copy: a Pause (standard clients pause
// before they checkpoint) or a Checkpoint (a client that does not).
type Trigger string

// The triggers.
const (
	TriggerPause      Trigger = "pause"
	TriggerCheckpoint Trigger = "checkpoint"
)

// Skip is a checkpoint that will be one-shot, for a reason found before
// pre-copy could start (its mode, the kernel, the task's state).
func (e *Engine) Skip(trigger Trigger, why string) *Rounds {
	e.Log.Infof("precopy: one-shot checkpoint: %s", why)
	return &Rounds{Report: &Report{Mode: e.Mode, Trigger: trigger, Skipped: why}}
}

// PreCopy runs pre-copy rounds on the running container until the policy
// stops them, a round fails, or interrupt is closed (a Resume overtook the
// Pause running them: the rounds so far are kept, stopped "interrupted").
// It does not fail: when pre-copy does not pay or cannot run, the Rounds
// have no image and the report says why, and the checkpoint is one-shot.
// A round whose CRIU died is thawed, so the container is never left
// frozen.
//
// runsAfterDump says the caller expects the container to run again right
// after the final dump (an early thaw, or a leave-running dump of a task
// nobody paused). Then, for a task checkpointed before, the rounds'
// flattens wait until after the final dump (see deferFlattens).
func (e *Engine) PreCopy(ctx context.Context, trigger Trigger, interrupt <-chan struct{}, runsAfterDump bool) *Rounds {
	cfg, why := e.plan(ctx)
	if why != "" {
		return e.Skip(trigger, why)
	}
	r, err := e.run(ctx, cfg, interrupt, e.deferFlattens(runsAfterDump))
	if err != nil {
		e.Runtime.RecoverFailedDump(ctx)
		return e.Skip(trigger, err.Error())
	}
	r.Report.Mode, r.Report.Trigger = e.Mode, trigger
	stop := r.Report.Stop
	if stop.Reason == policy.ReasonCannotConverge {
		// The load rewrites about everything a round copies: a final dump
		// on the rounds would write nearly all memory again and then pay
		// for flattening it. A one-shot dump is as short and flattens
		// nothing. The report keeps the rounds that showed it.
		r.discard(e.Log)
		r.Report.PreCopied = false
		r.Report.Skipped = fmt.Sprintf("policy: %s after %d rounds", stop.Reason, len(r.Report.Rounds))
		if r.parent != nil {
			r.noParent = fmt.Sprintf("the rounds that started from checkpoint %d's image were dropped (%s)", r.parent.Number, stop.Reason)
			r.parent = nil
		}
		e.Log.Infof("precopy: one-shot checkpoint: %s", r.Report.Skipped)
		return r
	}
	e.Log.Infof("precopy: pre-copy done: %d rounds in %s, stopped: %s, predicted final freeze %s",
		len(r.Report.Rounds), r.Report.PreCopy, stop.Reason, stop.PredictedFreeze)
	if len(r.pending) > 0 {
		e.Log.Infof("precopy: the flattens of rounds %v wait until after the final dump", r.pending)
	}
	return r
}

// deferFlattens says whether the rounds' flattens should wait until after
// the final dump. A flatten makes a round stand alone (the next dump then
// has a flat parent, and the final flatten resolves one level); it costs
// the most in the round that dumped against the last checkpoint's kept
// image, whose pages file it shifts when pages were added or removed below
// others (seconds under TCG), and a round after it would wait for it. Run
// during pre-copy, flattens lengthen it, and the final dump writes what
// the load dirtied meanwhile; run after the final dump, while the
// container runs again, they cost neither, and a round costs only its
// CRIU call: each dumps on the chain of the rounds before it (CRIU
// pre-dumps and dumps on a parent chain, checking a hole only against
// the parent's pagemap). If the container does not run again then (a
// client that stops it, or a pause the user holds), the flattens land
// inside the freeze, all of them (round 1's against a kept image the
// longest), and a failing one fails an exit checkpoint where a flatten
// before the freeze would have fallen back to a one-shot dump: so only a
// caller's expectation that it will run (runsAfterDump) defers them, and
// only for a task checkpointed before: a
// checkpoint that stops its task (nerdctl's default; the client pauses
// first, so the shim cannot tell at the Pause) is the task's last, so a
// task checkpointed before was left running by it, as periodic
// checkpoints are.
func (e *Engine) deferFlattens(runsAfterDump bool) bool {
	return runsAfterDump && e.checkpoints > 0
}

// plan is the policy the rounds run under, or why there are none: the
// container is too small or too large, or the caller's deadline too near.
func (e *Engine) plan(ctx context.Context) (policy.Config, string) {
	cfg := e.Policy
	cfg.FinalDumpFixedCost = max(cfg.FinalDumpFixedCost, e.finalFixed)
	pids, err := e.Runtime.Pids(ctx)
	if err != nil {
		return cfg, fmt.Sprintf("container processes: %v", err)
	}
	mem := ResidentBytes(pids)
	if no, why := policy.Skip(cfg, mem); no {
		return cfg, fmt.Sprintf("policy: %s (%d MiB resident)", why, mem>>20)
	}
	// A caller with a deadline (the kubelet's checkpoint request, through
	// the CRI plugin) must get its checkpoint before it: rounds may use at
	// most half of the time left, the other half being for the final dump
	// and the daemon storing the image. Too little left: straight to the
	// final dump.
	if dl, ok := ctx.Deadline(); ok {
		left := dl.Sub(e.Now()) / 2
		if left < minRoundsTime {
			return cfg, fmt.Sprintf("the request's deadline leaves %s for pre-copy", left.Round(time.Millisecond))
		}
		if cfg.TimeBudget == 0 || left < cfg.TimeBudget {
			cfg.TimeBudget = left
		}
	}
	return cfg, ""
}

// run pre-dumps until the policy stops it, ctx ends, or a round fails. On
// failure it removes what it wrote and returns the error.
//
// Each round is flattened right after it, unless deferFlattens: then the
// rounds stay chained for the final dump (finalDump.flattenDeferred), and
// the policy sees each unflattened round's own bytes as what it added (an
// upper bound: a flatten that takes its parent's pages over holds less).
func (e *Engine) run(ctx context.Context, cfg policy.Config, interrupt <-chan struct{}, deferFlattens bool) (_ *Rounds, retErr error) {
	// Each pre-copy has a dir of its own: rounds discarded late (a
	// timer's) never take a newer pre-copy's with them.
	if err := os.MkdirAll(e.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("pre-copy: %w", err)
	}
	dir, err := os.MkdirTemp(e.Dir, "rounds-")
	if err != nil {
		return nil, fmt.Errorf("pre-copy: %w", err)
	}
	r := &Rounds{Report: &Report{PreCopied: true}, dir: dir}
	defer func() {
		if retErr != nil {
			r.discard(e.Log)
		}
	}()
	if e.Incremental {
		e.startFromKept(r)
	}
	start := e.Now()
	for i := 1; ; i++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("pre-copy round %d: %w", i, err)
		}
		round, err := e.round(ctx, i, r)
		if err != nil {
			return nil, fmt.Errorf("pre-copy round %d: %w", i, err)
		}
		r.Report.Rounds = append(r.Report.Rounds, round)
		if !deferFlattens {
			if err := e.flattenNext(r); err != nil {
				return nil, fmt.Errorf("pre-copy: %w", err)
			}
		}
		d := policy.Decide(cfg, r.Report.Rounds, e.Now().Sub(start))
		select {
		case <-interrupt:
			d = policy.Decision{Reason: policy.ReasonInterrupted, PredictedFreeze: d.PredictedFreeze}
		default:
		}
		if !d.Continue {
			r.Report.Stop, r.Report.PreCopy = &d, e.Now().Sub(start)
			return r, nil
		}
	}
}

// round runs round i on top of r's image and makes it r's image, chained
// to the previous one until it is flattened (flattenNext).
func (e *Engine) round(ctx context.Context, i int, r *Rounds) (policy.Round, error) {
	d := Dirs{Image: roundDir(r.dir, i), Work: filepath.Join(r.dir, fmt.Sprintf("work-%d", i))}
	for _, dir := range []string{d.Image, d.Work} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return policy.Round{}, err
		}
	}
	if r.image != "" {
		d.Parent = filepath.Join("..", filepath.Base(r.image))
	}
	begin := e.Now()
	if err := e.Runtime.PreDump(ctx, d); err != nil {
		return policy.Round{}, err
	}
	wall := e.Now().Sub(begin)
	round, err := e.Stats(d.Work)
	if err != nil {
		return policy.Round{}, fmt.Errorf("statistics: %w", err)
	}
	round.Index, round.Start, round.Wall = i, begin, wall
	// A failed count only costs the policy an early signal.
	if pids, err := e.Runtime.Pids(ctx); err == nil {
		if n, err := CountSoftDirty(pids); err == nil {
			round.Dirtied, round.DirtiedAfter = n, e.Now().Sub(begin)
		}
	}
	// Until it is flattened the rounds hold the round's own files on top
	// of its parent's.
	round.ImageBytes = dirBytes(d.Image)
	if d.Parent != "" {
		r.pending = append(r.pending, i)
	}
	r.image = d.Image
	return round, nil
}

// roundDir is round i's image dir in rounds dir dir; round 0 is the kept
// image an incremental round 1 dumps against (Engine.adopt).
func roundDir(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("round-%d", i)) }

// flattenNext makes r's oldest round waiting for its flatten stand alone,
// recording what that did in its statistics (r.Report.Rounds), and removes
// the image it was chained to (consumed: every page it held is in the
// round now); nothing when every round is flat. Before the final dump it
// runs while the container runs.
func (e *Engine) flattenNext(r *Rounds) error {
	if len(r.pending) == 0 {
		return nil
	}
	i := r.pending[0]
	round := &r.Report.Rounds[i-1]
	dir, parent := roundDir(r.dir, i), roundDir(r.dir, i-1)
	parentBytes := dirBytes(parent)
	f := e.Now()
	res, err := e.Flatten(dir, r.dir)
	if err != nil {
		return fmt.Errorf("flatten round %d: %w", i, err)
	}
	round.Flatten = e.Now().Sub(f)
	recordFlatten(round, res)
	if res.TakeoverRefused != "" {
		e.Log.Infof("precopy: round %d's flatten copied %d pages of the previous image (took over %d): %s", i, res.PagesCopied, res.PagesTakenOver, res.TakeoverRefused)
	}
	// The round is complete without it: a parent left behind only takes
	// room until the rounds are discarded.
	if err := os.RemoveAll(parent); err != nil {
		e.Log.Warnf("precopy: remove round %d's parent after its flatten: %v", i, err)
	}
	r.pending = r.pending[1:]
	// What the round added is now the growth of the flat image over its
	// parent's.
	round.ImageBytes = dirBytes(dir) - parentBytes
	return nil
}

// dirBytes is the size of the regular files in dir.
func dirBytes(dir string) int64 {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
	}
	return n
}

// recordFlatten records in r (a round, or the final dump) what its
// flatten did with the previous image: pages taken over or copied, why it
// copied, the ranges it shifted.
func recordFlatten(r *policy.Round, res imagechain.Result) {
	r.FlattenTakenOver, r.FlattenCopied, r.FlattenCopyReason = res.PagesTakenOver, res.PagesCopied, res.TakeoverRefused
	r.FlattenRangeShifts = res.RangeShifts
}
