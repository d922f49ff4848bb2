package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/docker/go-units"

	"github.com/precopy/precopy/cmd/precopyctl/internal/checkpoints"
	"github.com/precopy/precopy/precopy"
)

// Config is what precopyctl checkpoint was asked.
type Config struct {
	// ID is the container's.
	ID string
	// Every is the time from one checkpoint's start to the next's; a
	// checkpoint that takes longer is followed by the next at once.
	Every time.Duration
	// Keep is how many checkpoints are kept: older ones are removed.
	Keep int
	// RW also checkpoints the writable layer (ctr's --rw).
	RW bool
	// Prefix starts the images' names: <Prefix>/<ID>:<time>.
	Prefix string
	// RestoreOnExit restores the newest checkpoint when the task dies
	// abnormally (Exit.Clean), unless its task is deleted within Grace
	// of its death: a user's `ctr task kill` then `ctr task delete`.
	RestoreOnExit bool
	Grace         time.Duration
	// RestoredIO is the stdio of restored tasks.
	RestoredIO cio.Creator
	// Out takes one line per event: checkpoint, removed, exited, died,
	// restored, stopped.
	Out io.Writer
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

// ErrDied is wrapped by Run's error when the task died abnormally and was
// not restored: no --restore-on-exit, no checkpoint to restore yet.
var ErrDied = errors.New("the task died")

// Run checkpoints container cfg.ID every cfg.Every until stop ends (the
// checkpoint in progress completes first; abort ends that too, the task
// resumed) or its task exits: cleanly, Run returns nil; abnormally, Run
// restores the newest checkpoint and goes on if cfg.RestoreOnExit says
// so, else returns ErrDied. A failed checkpoint is reported on its line
// and the next one is tried at its time.
func Run(stop, abort context.Context, client *containerd.Client, cfg Config) error {
	s := &supervisor{client: client, cfg: cfg, now: cfg.Now}
	if s.now == nil {
		s.now = time.Now
	}
	return s.run(stop, abort)
}

type supervisor struct {
	client *containerd.Client
	cfg    Config
	now    func() time.Time
	// moments are when each checkpoint still kept caught the container's
	// memory (the final dump's start, from its report), by image name:
	// how much state a restore of it loses.
	moments map[string]time.Time
}

func (s *supervisor) run(stop, abort context.Context) error {
	ctr, task, exited, err := s.watch(abort)
	if err != nil {
		return err
	}
	s.moments = map[string]time.Time{}
	next := time.NewTimer(0)
	defer next.Stop()
	for {
		select {
		case <-stop.Done():
			s.line("stopped", "reason=signal")
			return nil
		case st := <-exited:
			if err := st.Error(); err != nil {
				if stop.Err() != nil {
					continue // the wait ended with the run: stop's case says so
				}
				return fmt.Errorf("wait for %s: %w", s.cfg.ID, err)
			}
			e := Exit{Code: st.ExitCode(), At: st.ExitTime()}
			restored, err := s.died(stop, abort, e)
			if err != nil || !restored {
				return err
			}
			if ctr, task, exited, err = s.watch(abort); err != nil {
				return err
			}
		case <-next.C:
			start := s.now()
			s.checkpoint(abort, ctr, task, start)
			next.Reset(max(s.cfg.Every-s.now().Sub(start), 0))
		}
	}
}

// watch loads the container and its task and waits for the task's exit.
func (s *supervisor) watch(ctx context.Context) (containerd.Container, containerd.Task, <-chan containerd.ExitStatus, error) {
	ctr, err := s.client.LoadContainer(ctx, s.cfg.ID)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("container %s: %w", s.cfg.ID, err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("container %s: %w", s.cfg.ID, err)
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("container %s: wait: %w", s.cfg.ID, err)
	}
	return ctr, task, exited, nil
}

// checkpoint takes one checkpoint, says how it went and removes those
// beyond cfg.Keep.
func (s *supervisor) checkpoint(ctx context.Context, ctr containerd.Container, task containerd.Task, now time.Time) {
	name := checkpoints.Name(s.cfg.Prefix, s.cfg.ID, now)
	t, err := checkpoints.Take(ctx, s.client, ctr, s.cfg.Prefix, name, s.cfg.RW, now)
	if err != nil {
		// A task that died meanwhile fails its checkpoint: its exit,
		// next, says what happened.
		if st, serr := task.Status(ctx); serr == nil && st.Status == containerd.Stopped {
			return
		}
		s.line("checkpoint-failed", "image=%s error=%q", name, err.Error())
		return
	}
	moment := t.Taken
	if r := t.Report; r != nil && r.Final != nil && !r.Final.Start.IsZero() {
		moment = r.Final.Start
	}
	s.moments[t.Name] = moment
	s.line("checkpoint", "image=%s %s", t.Name, describe(t))
	removed, err := checkpoints.Prune(ctx, s.client, s.cfg.ID, s.cfg.Keep)
	for _, name := range removed {
		delete(s.moments, name)
		s.line("removed", "image=%s", name)
	}
	if err != nil {
		s.line("remove-failed", "error=%q", err.Error())
	}
}

// describe is a checkpoint's line: its final freeze (CRIU's, from
// precopy's report), the pause the client saw, its size, and how
// pre-copy went.
func describe(t checkpoints.Taken) string {
	kv := []string{"freeze=unknown"}
	r := t.Report
	if r != nil && r.Final != nil {
		kv[0] = "freeze=" + ms(r.Final.Freeze())
	}
	kv = append(kv, "pause="+ms(t.Pause), "size="+units.BytesSize(float64(t.Bytes)))
	if r == nil {
		reason := "no precopy report"
		if t.ReportErr != nil && !errors.Is(t.ReportErr, errdefs.ErrNotFound) {
			reason = t.ReportErr.Error()
		}
		return strings.Join(append(kv, "report="+strconv.Quote(reason)), " ")
	}
	kv = append(kv, fmt.Sprintf("pre_copied=%v rounds=%d", r.PreCopied, len(r.Rounds)))
	if r.Stop != nil {
		kv = append(kv, fmt.Sprintf("stop=%s predicted_freeze=%s", r.Stop.Reason, ms(r.Stop.PredictedFreeze)))
	}
	if r.Skipped != "" {
		kv = append(kv, "skipped="+strconv.Quote(r.Skipped))
	}
	if inc := r.Incremental; inc != nil {
		kv = append(kv, incremental(inc))
	}
	return strings.Join(kv, " ")
}

func incremental(inc *precopy.Incremental) string {
	if inc.Parent == nil {
		return fmt.Sprintf("parent=none no_parent=%q", inc.NoParent)
	}
	return fmt.Sprintf("parent=%d from_parent_pages=%d saved=%s", inc.Parent.Number, inc.PagesFromParent, units.BytesSize(float64(inc.BytesSaved)))
}

// died handles the task's exit e: a clean one, or one a user's delete of
// the task follows within the grace, is left alone; an abnormal one is
// restored from the newest checkpoint when asked (restored true).
func (s *supervisor) died(stop, abort context.Context, e Exit) (restored bool, _ error) {
	if e.Clean() {
		s.line("exited", "status=%q action=none", e.String())
		return false, nil
	}
	s.line("died", "status=%q at=%s", e.String(), e.At.UTC().Format(time.RFC3339Nano))
	if !s.cfg.RestoreOnExit {
		return false, fmt.Errorf("%s: %w: %s (no --restore-on-exit)", s.cfg.ID, ErrDied, e)
	}
	if gone, err := s.deletedByUser(stop, abort); err != nil || gone {
		return false, err
	}
	latest, err := checkpoints.Latest(abort, s.client, s.cfg.ID)
	if errdefs.IsNotFound(err) {
		return false, fmt.Errorf("%s: %w: %s, and there is no checkpoint to restore yet", s.cfg.ID, ErrDied, e)
	}
	if err != nil {
		return false, err
	}
	if _, err := checkpoints.Restore(abort, s.client, s.cfg.ID, latest, s.cfg.RestoredIO); err != nil {
		return false, err
	}
	running := s.now()
	moment, ok := s.moments[latest.Name]
	if !ok {
		moment = latest.Taken // taken by an earlier run: when it was asked for
	}
	s.line("restored", "image=%s recovery=%s lost=%s", latest.Name, ms(running.Sub(e.At)), ms(e.At.Sub(moment)))
	return true, nil
}

// deletedByUser waits cfg.Grace and says whether the dead task, or its
// container, was deleted meanwhile by someone else: `ctr task kill` then
// `ctr task delete` (or `ctr task delete -f`, `ctr container delete`)
// means the user wants it gone. containerd publishes no event for a kill
// request, so this, and the signal (Exit.Clean), are what tell the two
// apart.
func (s *supervisor) deletedByUser(stop, abort context.Context) (bool, error) {
	select {
	case <-time.After(s.cfg.Grace):
	case <-stop.Done():
		s.line("stopped", "reason=signal action=none")
		return true, nil
	}
	ctr, err := s.client.LoadContainer(abort, s.cfg.ID)
	if err == nil {
		_, err = ctr.Task(abort, nil)
	}
	if errdefs.IsNotFound(err) {
		s.line("deleted", "action=none reason=%q", "its task was deleted by someone else within "+s.cfg.Grace.String()+" of its death")
		return true, nil
	}
	return false, err
}

// line writes one event line: time, event, container, then key=value.
func (s *supervisor) line(event, format string, args ...any) {
	fmt.Fprintf(s.cfg.Out, "%s %s %s %s\n", s.now().UTC().Format("2006-01-02T15:04:05.000Z"), event, s.cfg.ID, fmt.Sprintf(format, args...))
}

// ms is d in milliseconds, for lines a script may parse.
func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }
