package pin

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// A View is where a pin's copy goes and how a diff of the layer gets to
// see it instead of the live layer.
type View interface {
	// Prepare makes the empty dir the copy of upper goes into, having
	// recorded what Release needs should this process die.
	Prepare(ctx context.Context, upper string) (copyDir string, err error)
	// Show makes the copy in copyDir what a diff of upper sees.
	Show(ctx context.Context, upper, copyDir string) error
	// Release undoes Show if it was done, and removes copyDir and what
	// Prepare recorded. It is called once Prepare succeeded, whatever
	// followed, and again after it failed.
	Release(ctx context.Context, upper, copyDir string) error
}

// Options say how to pin.
type Options struct {
	View View
	// Limit refuses a layer too large; its zero Rate means RateFor the
	// layer.
	Limit Limit
	// TTL releases a pin not unpinned within it; 0: none.
	TTL time.Duration
}

// Result is what a pin copied and what it cost.
type Result struct {
	Size
	// Cost is the pin's whole time: measure, copy and show.
	Cost time.Duration `json:"cost_ns"`
	// Where is the copy.
	Where string `json:"where"`
}

// ErrUnpinned is why a pin that was unpinned during its copy failed.
var ErrUnpinned = fmt.Errorf("unpinned during its copy: %w", errdefs.ErrAborted)

// Set is the pins of one process, keyed by the upper dir they pin. Its
// zero value is empty and ready.
type Set struct {
	mu   sync.Mutex
	pins map[string]*entry
}

// An entry is one pin, from its registration, before its copy starts,
// until it is released.
type entry struct {
	upper string
	view  View
	// op is held by Pin while it makes the pin and by a release, so that
	// a release waits for the copy it cancelled to stop.
	op     chan struct{}
	cancel context.CancelCauseFunc // ends the copy
	// Under Set.mu: shown once the copy stands for the layer, until a
	// release begins.
	shown bool
	timer *time.Timer
	// Under op: the copy, once prepared, until released.
	copy string
}

func (e *entry) lock(ctx context.Context) error {
	select {
	case e.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the pin of %s: %w", e.upper, ctx.Err())
	}
}

func (e *entry) unlock() { <-e.op }

// Pin copies the layer whose upper dir is upper as it is now and shows the
// copy through o.View until Unpin, o.TTL or Close. The caller holds the
// container frozen meanwhile. A pin of upper that stands is released
// first. The pin is registered before its copy starts: an Unpin during
// the copy cancels it, and Pin then fails with ErrUnpinned. If ctx ends
// before Pin returns, the pin is released and Pin fails: a caller that
// gave up never leaves a pin nobody knows of.
func (s *Set) Pin(ctx context.Context, upper string, o Options) (Result, error) {
	start := time.Now()
	if !filepath.IsAbs(upper) || filepath.Clean(upper) != upper {
		return Result{}, fmt.Errorf("pin %q: not a clean absolute path: %w", upper, errdefs.ErrInvalidArgument)
	}
	if o.View == nil {
		return Result{}, fmt.Errorf("pin %s: no view: %w", upper, errdefs.ErrInvalidArgument)
	}
	if err := s.Unpin(ctx, upper); err != nil {
		return Result{}, fmt.Errorf("pin %s: release its earlier pin: %w", upper, err)
	}
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	e := &entry{upper: upper, view: o.View, op: make(chan struct{}, 1), cancel: cancel}
	e.op <- struct{}{}
	defer e.unlock()
	s.mu.Lock()
	if s.pins[upper] != nil {
		s.mu.Unlock()
		return Result{}, fmt.Errorf("pin %s: pinned meanwhile by another call: %w", upper, errdefs.ErrAlreadyExists)
	}
	if s.pins == nil {
		s.pins = map[string]*entry{}
	}
	s.pins[upper] = e
	s.mu.Unlock()

	res, err := e.make(cctx, o.Limit)
	s.mu.Lock()
	if err == nil {
		err = context.Cause(cctx) // unpinned, or the caller gave up, after the copy
	}
	if err == nil {
		e.shown = true
		if o.TTL > 0 {
			e.timer = time.AfterFunc(o.TTL, func() {
				s.expire(context.WithoutCancel(ctx), e, o.TTL)
			})
		}
		s.mu.Unlock()
		res.Cost = time.Since(start)
		log.G(ctx).WithFields(log.Fields{"upper": upper, "copy": res.Where, "size": res.Size.String(), "cost": res.Cost}).Info("pinned a writable layer")
		return res, nil
	}
	s.mu.Unlock()
	if errors.Is(err, context.Canceled) && errors.Is(context.Cause(cctx), ErrUnpinned) {
		err = ErrUnpinned
	}
	err = fmt.Errorf("pin %s: %w", upper, err)
	// Release what was made, with a context the caller's end does not
	// stop; drop the entry only if that worked, so that an Unpin can
	// try again.
	if rerr := e.release(context.WithoutCancel(ctx)); rerr != nil {
		return Result{}, errors.Join(err, rerr)
	}
	s.drop(e)
	return Result{}, err
}

// make measures the layer, and copies and shows it if the limit allows.
func (e *entry) make(ctx context.Context, limit Limit) (Result, error) {
	size, err := Measure(ctx, e.upper)
	if err != nil {
		return Result{}, err
	}
	if limit.Rate == (Rate{}) {
		limit.Rate = RateFor(e.upper)
	}
	if err := limit.Check(e.upper, size); err != nil {
		return Result{}, err
	}
	if e.copy, err = e.view.Prepare(ctx, e.upper); err != nil {
		return Result{}, err
	}
	if err := copyTree(ctx, e.upper, e.copy); err != nil {
		return Result{}, err
	}
	if err := e.view.Show(ctx, e.upper, e.copy); err != nil {
		return Result{}, err
	}
	return Result{Size: size, Where: e.copy}, nil
}

// copyTree is Copy; tests hold a copy in progress through it.
var copyTree = Copy

// release releases what of e was made. Callers hold e.op.
func (e *entry) release(ctx context.Context) error {
	if e.copy == "" {
		return nil
	}
	if err := e.view.Release(ctx, e.upper, e.copy); err != nil {
		return fmt.Errorf("release the pin of %s: %w", e.upper, err)
	}
	e.copy = ""
	return nil
}

func (s *Set) drop(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pins[e.upper] == e {
		delete(s.pins, e.upper)
	}
}

// Unpin releases the pin of upper: a pin being made is cancelled, and
// Unpin returns once nothing of it is left. Unpinning what is not pinned
// is not an error (the pin may have expired). If the release fails, the
// pin stays known, no longer shown, for a later Unpin to try again.
func (s *Set) Unpin(ctx context.Context, upper string) error {
	return s.end(ctx, upper, nil, "unpinned")
}

// end releases the pin of upper, if it is only (nil: any pin).
func (s *Set) end(ctx context.Context, upper string, only *entry, why string) error {
	s.mu.Lock()
	e := s.pins[upper]
	if e == nil || (only != nil && e != only) {
		s.mu.Unlock()
		return nil
	}
	e.cancel(ErrUnpinned)
	e.shown = false
	if e.timer != nil {
		e.timer.Stop()
	}
	s.mu.Unlock()
	if err := e.lock(ctx); err != nil {
		return err
	}
	defer e.unlock()
	if err := e.release(ctx); err != nil {
		return err
	}
	s.drop(e)
	log.G(ctx).WithFields(log.Fields{"upper": upper, "why": why}).Info("released a pinned writable layer")
	return nil
}

func (s *Set) expire(ctx context.Context, e *entry, ttl time.Duration) {
	if err := s.end(ctx, e.upper, e, fmt.Sprintf("not unpinned within %s", ttl)); err != nil {
		log.G(ctx).WithError(err).WithField("upper", e.upper).Warn("release an expired pin")
	}
}

// Copy is where the copy of upper is while its pin stands.
func (s *Set) Copy(upper string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.pins[upper]; e != nil && e.shown {
		return e.copy, true
	}
	return "", false
}

// Pinned lists the upper dirs the set knows of: pins standing, being
// made, or whose release failed.
func (s *Set) Pinned() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var uppers []string
	for u := range s.pins {
		uppers = append(uppers, u)
	}
	return uppers
}

// Close releases every pin.
func (s *Set) Close(ctx context.Context) error {
	var errs []error
	for _, u := range s.Pinned() {
		errs = append(errs, s.end(ctx, u, nil, "closing"))
	}
	return errors.Join(errs...)
}
