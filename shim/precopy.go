//go:build linux

package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/imagechain"
	"github.com/precopy/precopy/precopy/policy"
	"github.com/precopy/precopy/settings"
)

// discardAfter is how long the rounds of a pre-copying Pause wait for the
// Checkpoint that standard clients send next; a Pause that no Checkpoint
// follows (a user's `ctr task pause`) must not hold their memory forever.
const discardAfter = 2 * time.Minute

// warnCopiedMerge logs once per shim that final merges cannot take the
// rounds over.
var warnCopiedMerge sync.Once

// minRoundsTime is the least time worth starting pre-copy with under a
// caller's deadline: about one first round of a mid-sized container.
const minRoundsTime = 2 * time.Second

// container is precopy's state for one container the shim serves.
type container struct {
	// mu serialises pre-copy, Pause, Checkpoint, Resume and Delete of
	// this container: a second checkpoint waits for the first.
	mu        sync.Mutex
	id        string
	bundle    string
	namespace string
	settings  settings.Settings

	// chain is what a pre-copying Pause left for the Checkpoint after it;
	// report is that Pause's account, also when it skipped pre-copy.
	chain   *precopy.Chain
	report  *precopy.Report
	discard *time.Timer

	// readonlyRootfs: the OCI spec's root.readonly, which makes an early
	// thaw safe (no rw-layer change can follow the dump).
	readonlyRootfs bool
	// ownNetns: the container has a network namespace of its own, which
	// CRIU locks during the dump (see criuConfig).
	ownNetns bool
	// upper is the writable layer of the rootfs (the overlay upper dir
	// the snapshotter mounted), which precopyd can pin for an early thaw
	// of a writable rootfs; "" when unknown. pinned: precopyd holds a pin
	// of it, to release at the client's Resume.
	upper  string
	pinned bool
	// pausedAt is when a Pause of the running container returned; zero
	// once a Resume or Checkpoint followed. thawedEarly: a Checkpoint
	// thawed it, so the client's Resume has nothing left to do.
	pausedAt    time.Time
	thawedEarly bool

	// finalFixed is the part of this container's last final dump that did
	// not copy memory (tmpfs mounts, namespaces, the network lock): the
	// policy's estimate of it is a default for any container, this is
	// measured, and the next checkpoint's rounds plan with it.
	finalFixed time.Duration

	// interrupt, while rounds run, is closed by a Resume that overtakes
	// the Pause running them, so that it waits for one round at most
	// instead of all. Guarded by interruptMu, not mu, which the Pause
	// holds.
	interruptMu sync.Mutex
	interrupt   chan struct{}
}

// startRounds returns the channel that interrupts the rounds about to run.
func (c *container) startRounds() <-chan struct{} {
	c.interruptMu.Lock()
	defer c.interruptMu.Unlock()
	c.interrupt = make(chan struct{})
	return c.interrupt
}

// endRounds forgets the channel of rounds that ended.
func (c *container) endRounds() {
	c.interruptMu.Lock()
	defer c.interruptMu.Unlock()
	c.interrupt = nil
}

// interruptRounds ends running rounds after the one in progress, if any.
func (c *container) interruptRounds() {
	c.interruptMu.Lock()
	defer c.interruptMu.Unlock()
	if c.interrupt != nil {
		close(c.interrupt)
		c.interrupt = nil
	}
}

// takeChain hands over the pending rounds and the report of the Pause
// that made them (a report without rounds says why there are none).
// Callers hold c.mu.
func (c *container) takeChain() (*precopy.Chain, *precopy.Report) {
	if c.discard != nil {
		c.discard.Stop()
		c.discard = nil
	}
	chain, report := c.chain, c.report
	c.chain, c.report = nil, nil
	return chain, report
}

// dropChain discards the pending rounds, if any. Callers hold c.mu.
func (c *container) dropChain(ctx context.Context, why string) {
	chain, _ := c.takeChain()
	if chain == nil {
		return
	}
	if err := chain.Discard(); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("precopy: discard rounds")
	}
	log.G(ctx).WithFields(log.Fields{"id": c.id, "rounds": len(chain.Rounds)}).Infof("precopy: rounds discarded: %s", why)
}

// preCopy runs pre-copy rounds on the running container, or says in the
// report why not. A nil chain means the checkpoint will be one-shot.
// Callers hold c.mu.
func (s *Service) preCopy(ctx context.Context, c *container, trigger string) (*precopy.Chain, *precopy.Report) {
	report := &precopy.Report{Mode: string(c.settings.Mode), Trigger: trigger}
	skip := func(why string) (*precopy.Chain, *precopy.Report) {
		report.Skipped = why
		log.G(ctx).WithField("id", c.id).Infof("precopy: one-shot checkpoint: %s", why)
		return nil, report
	}
	if c.settings.Mode != settings.ModeAlways {
		return skip(fmt.Sprintf("pre-copy mode is %q", c.settings.Mode))
	}
	if ok, why := softDirty(); !ok {
		return skip("the kernel cannot track dirty memory: " + why)
	}
	st, err := s.TTRPCTaskService.State(ctx, &taskAPI.StateRequest{ID: c.id})
	if err != nil {
		return skip(fmt.Sprintf("task state: %v", err))
	}
	if st.Status != apitask.Status_RUNNING {
		return skip(fmt.Sprintf("task is %s, not running", st.Status))
	}
	mem, err := s.residentBytes(ctx, c.id)
	if err != nil {
		return skip(fmt.Sprintf("container memory: %v", err))
	}
	if no, why := policy.Skip(c.settings.Policy, mem); no {
		return skip(fmt.Sprintf("policy: %s (%d MiB resident)", why, mem>>20))
	}
	cs := withFixedCost(c.settings, c.finalFixed)
	// A caller with a deadline (the kubelet's checkpoint request, through
	// the CRI plugin) must get its checkpoint before it: rounds may use at
	// most half of the time left, the other half being for the final dump
	// and the daemon storing the image. Too little left: straight to the
	// final dump.
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl) / 2
		if left < minRoundsTime {
			return skip(fmt.Sprintf("the request's deadline leaves %s for pre-copy", left.Round(time.Millisecond)))
		}
		if cs.Policy.TimeBudget == 0 || left < cs.Policy.TimeBudget {
			cs.Policy.TimeBudget = left
		}
	}
	s.criu.use(c.ownNetns)
	r, err := newRunc(c.bundle, c.namespace)
	if err != nil {
		return skip(err.Error())
	}
	e := &precopy.Engine{
		Dumper:    runcPreDumper{runc: r, id: c.id},
		Policy:    policyAdapter(cs.Policy),
		Stats:     precopy.ReadDumpStats,
		Flatten:   flatten,
		Dir:       filepath.Join(c.bundle, "precopy"),
		Interrupt: c.startRounds(),
		Dirtied: func() (uint64, error) {
			pids, err := s.pids(ctx, c.id)
			if err != nil {
				return 0, err
			}
			return precopy.CountSoftDirty(pids)
		},
	}
	chain, err := e.Run(ctx)
	c.endRounds()
	if err != nil {
		thawIfLeftFrozen(ctx, r, c.id)
		return skip(err.Error())
	}
	report.Rounds, report.Stop, report.PreCopy = chain.Rounds, &chain.Stop, chain.Duration
	if chain.Stop.Reason == string(policy.ReasonCannotConverge) {
		// The load rewrites about everything a round copies: a final dump
		// on the rounds would write nearly all memory again and then pay
		// for merging it. A one-shot dump is as short and merges nothing.
		if err := chain.Discard(); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("precopy: discard rounds")
		}
		return skip(fmt.Sprintf("policy: %s after %d rounds", chain.Stop.Reason, len(chain.Rounds)))
	}
	report.PreCopied = true
	log.G(ctx).WithFields(log.Fields{
		"id": c.id, "rounds": len(chain.Rounds), "stop": chain.Stop.Reason,
		"predicted_freeze": chain.Stop.PredictedFreeze, "took": chain.Duration,
	}).Info("precopy: pre-copy done")
	return chain, report
}

// thawIfLeftFrozen thaws a container that a failed CRIU dump (a round, or
// a final dump of a task the client did not pause) left frozen. CRIU
// freezes the container's cgroup to dump it and thaws it before it exits;
// a CRIU that was killed (OOM, a signal, the request's context ending)
// leaves the cgroup frozen. Callers make sure the task was running before
// the dump (pre-copy only starts on a running container; thawIfCRIUFroze
// asks containerd) and hold c.mu, so a frozen cgroup here is CRIU's.
func thawIfLeftFrozen(ctx context.Context, r *gorunc.Runc, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	st, err := r.State(ctx, id)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Warn("precopy: state after a failed CRIU dump")
		return
	}
	if st.Status != "paused" {
		return
	}
	if err := r.Resume(ctx, id); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Error("precopy: a failed CRIU dump left the container frozen and it could not be thawed")
		return
	}
	log.G(ctx).WithField("id", id).Warn("precopy: thawed the container a failed CRIU dump left frozen")
}

// thawIfCRIUFroze thaws c's container when containerd holds it running
// but its cgroup is frozen: a CRIU that froze it to dump and died before
// thawing it (a pause the client asked for shows as paused, and stays).
// Callers hold c.mu.
func (s *Service) thawIfCRIUFroze(ctx context.Context, c *container) {
	st, err := s.TTRPCTaskService.State(ctx, &taskAPI.StateRequest{ID: c.id})
	if err != nil || st.Status != apitask.Status_RUNNING {
		return
	}
	r, err := newRunc(c.bundle, c.namespace)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("precopy: check for a frozen cgroup after a failed dump")
		return
	}
	thawIfLeftFrozen(ctx, r, c.id)
}

// flatten makes a round stand alone. The engine removes the round before
// it right after, so the flatten may take that round's pages over instead
// of copying them: its cost follows the pages the round wrote, not the
// container's memory, and the rounds follow each other sooner (less is
// dirtied before the final dump).
func flatten(dir string) error {
	_, err := imagechain.FlattenConsuming(dir)
	return err
}

// checkpointWithParent does the final dump of r on top of chain's last
// round, flattens the image and writes the report. If the dump with a
// parent fails while the container still runs, it is redone one-shot.
// afterDump runs as soon as a dump the image will hold is written.
func (s *Service) checkpointWithParent(ctx context.Context, c *container, r *taskAPI.CheckpointTaskRequest, req *options.CheckpointOptions, chain *precopy.Chain, report *precopy.Report, afterDump func()) error {
	opts := proto.Clone(req).(*options.CheckpointOptions)
	// runc wants the parent relative to the image path.
	parent, err := filepath.Rel(r.Path, chain.LastImage())
	if err != nil {
		return fmt.Errorf("parent of %s: %w", r.Path, err)
	}
	opts.ParentPath = parent
	// opts.WorkPath is set (Checkpoint sees to it): the final dump's
	// statistics are read from there.
	withParent, err := withOptions(r, opts)
	if err != nil {
		return err
	}
	// Redone one-shot when the container still runs (leave-running): a
	// checkpoint that exits the container cannot be taken twice.
	oneShot := func(err error) error {
		if opts.Exit {
			return err
		}
		if report.Thaw != nil && report.Thaw.Early {
			// The container runs again: a dump now would not match the
			// rw layer the client diffs (pinned, or taken at the pause).
			return fmt.Errorf("%w (thawed after the dump: not redone)", err)
		}
		// A leave-running dump of a task the client did not pause, whose
		// CRIU died, left the cgroup frozen; a dump of it now would
		// leave it so.
		s.thawIfCRIUFroze(ctx, c)
		report.FellBack = err.Error()
		log.G(ctx).WithError(err).WithField("id", r.ID).Warn("precopy: checkpoint redone one-shot")
		if err := emptyDir(r.Path); err != nil {
			return err
		}
		if _, err := s.TTRPCTaskService.Checkpoint(ctx, r); err != nil {
			s.thawIfCRIUFroze(ctx, c)
			return err
		}
		afterDump()
		return report.Write(r.Path)
	}
	start := time.Now()
	if _, err := s.TTRPCTaskService.Checkpoint(ctx, withParent); err != nil {
		return oneShot(fmt.Errorf("final dump on pre-copied rounds: %w", err))
	}
	wall := time.Since(start)
	afterDump()
	if report.Thaw != nil && report.Thaw.Early {
		report.Thaw.AfterThaw = append(report.Thaw.AfterThaw, "merge of the final dump with the last round", "report")
	}
	final, err := precopy.ReadDumpStats(opts.WorkPath)
	if err != nil {
		log.G(ctx).WithError(err).Warn("precopy: final dump statistics")
	}
	final.Wall = wall
	report.Final = &final
	if err == nil {
		c.finalFixed = max(final.Pause()-final.MemDump-final.MemWrite, 0)
	}
	f := time.Now()
	// The rounds are discarded after this, so the final flatten may take
	// over the last round's pages instead of copying them, where the page
	// layout allows.
	res, err := imagechain.FlattenConsuming(r.Path)
	if res.TakeoverRefused != "" {
		// The merge copied the whole memory inside the pause; say why once.
		warnCopiedMerge.Do(func() {
			log.G(ctx).WithField("why", res.TakeoverRefused).Warn("precopy: the final merge copies the rounds' pages instead of taking them over; put containerd's checkpoint temp dir ($XDG_RUNTIME_DIR or $TMPDIR) on the filesystem of its state dir (see README)")
		})
	}
	if err != nil {
		// The image still points at rounds about to be discarded (and
		// may need pages the takeover rewrote): it must not be handed out.
		return oneShot(fmt.Errorf("flatten final image: %w", err))
	}
	report.FinalFlatten = time.Since(f)
	log.G(ctx).WithFields(log.Fields{
		"id": r.ID, "rounds": len(chain.Rounds), "final_freeze": final.Pause(),
		"predicted_freeze": chain.Stop.PredictedFreeze, "final_pages": final.PagesWritten,
		"flatten": report.FinalFlatten,
	}).Info("precopy: checkpoint done")
	return report.Write(r.Path)
}

// namespaceOf is the containerd namespace of a request.
func namespaceOf(ctx context.Context) (string, error) {
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		return "", errors.New("no namespace in request")
	}
	return ns, nil
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

// residentBytes is the memory resident in the container's processes, what
// a first round would copy. It sums /proc/<pid>/statm, which works alike
// on cgroup v1 and v2 (the runc-v2 service's Stats returns either).
func (s *Service) residentBytes(ctx context.Context, id string) (uint64, error) {
	pids, err := s.pids(ctx, id)
	if err != nil {
		return 0, err
	}
	page := uint64(os.Getpagesize())
	var total uint64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
		if err != nil {
			continue // exited meanwhile
		}
		var size, resident uint64
		if _, err := fmt.Sscan(string(b), &size, &resident); err == nil {
			total += resident * page
		}
	}
	return total, nil
}

// pids are the container's processes.
func (s *Service) pids(ctx context.Context, id string) ([]int, error) {
	resp, err := s.TTRPCTaskService.Pids(ctx, &taskAPI.PidsRequest{ID: id})
	if err != nil {
		return nil, err
	}
	pids := make([]int, len(resp.Processes))
	for i, p := range resp.Processes {
		pids[i] = int(p.Pid)
	}
	return pids, nil
}

// withOptions is checkpoint request r with runc's checkpoint options opts.
func withOptions(r *taskAPI.CheckpointTaskRequest, opts *options.CheckpointOptions) (*taskAPI.CheckpointTaskRequest, error) {
	any, err := typeurl.MarshalAnyToProto(opts)
	if err != nil {
		return nil, fmt.Errorf("checkpoint options: %w", err)
	}
	return &taskAPI.CheckpointTaskRequest{ID: r.ID, Path: r.Path, Options: any}, nil
}
