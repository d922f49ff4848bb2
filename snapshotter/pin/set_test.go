package pin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
)

// layerDir makes a small layer to pin, and the dir its copies go to.
func layerDir(t *testing.T) (upper, copies string) {
	t.Helper()
	root := t.TempDir()
	upper = filepath.Join(root, "snapshots", "1", "fs")
	must(t, os.MkdirAll(filepath.Join(upper, "etc"), 0o755))
	write(t, filepath.Join(upper, "etc", "status"), "at-dump", 0o644)
	return upper, filepath.Join(root, "pins")
}

// requireEmpty fails unless dir holds nothing (or is gone).
func requireEmpty(t *testing.T, dir string) {
	t.Helper()
	if entries, err := os.ReadDir(dir); len(entries) != 0 || (err != nil && !errors.Is(err, os.ErrNotExist)) {
		t.Errorf("%s holds %v (%v), want nothing", dir, entries, err)
	}
}

// TestSetPinUnpin pins a layer, finds its copy as it was while the layer
// changes, and unpins it: the copy goes; unpinning again, or what was
// never pinned, is not an error.
func TestSetPinUnpin(t *testing.T) {
	ctx := logtest.WithT(context.Background(), t)
	upper, copies := layerDir(t)
	var s Set
	res, err := s.Pin(ctx, upper, Options{View: Served{Dir: copies}, TTL: time.Hour})
	must(t, err)
	if res.Files != 2 || res.ApparentBytes != int64(len("at-dump")) || res.Cost <= 0 || filepath.Dir(res.Where) != copies {
		t.Errorf("result %+v", res)
	}
	write(t, filepath.Join(upper, "etc", "status"), "after-thaw", 0o644)
	c, ok := s.Copy(upper)
	if !ok || c != res.Where {
		t.Fatalf("copy of the pinned layer: %q, %v; want %q", c, ok, res.Where)
	}
	if b, _ := os.ReadFile(filepath.Join(c, "etc", "status")); string(b) != "at-dump" {
		t.Errorf("pinned copy holds %q", b)
	}

	must(t, s.Unpin(ctx, upper))
	if _, ok := s.Copy(upper); ok || len(s.Pinned()) != 0 {
		t.Error("pinned after Unpin")
	}
	requireEmpty(t, copies)
	must(t, s.Unpin(ctx, upper))
	must(t, s.Unpin(ctx, "/never/pinned"))
}

// TestSetPinReplaces pins a pinned layer again: the new copy replaces the
// old, which is removed.
func TestSetPinReplaces(t *testing.T) {
	ctx := logtest.WithT(context.Background(), t)
	upper, copies := layerDir(t)
	var s Set
	o := Options{View: Served{Dir: copies}}
	first, err := s.Pin(ctx, upper, o)
	must(t, err)
	write(t, filepath.Join(upper, "etc", "status"), "second", 0o644)
	second, err := s.Pin(ctx, upper, o)
	must(t, err)
	if _, err := os.Stat(first.Where); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("first copy: %v, want it removed", err)
	}
	if b, _ := os.ReadFile(filepath.Join(second.Where, "etc", "status")); string(b) != "second" {
		t.Errorf("second copy holds %q", b)
	}
	must(t, s.Close(ctx))
	requireEmpty(t, copies)
}

// TestSetPinRefused refuses a layer over the limit before making anything,
// and a path that is not clean and absolute.
func TestSetPinRefused(t *testing.T) {
	ctx := logtest.WithT(context.Background(), t)
	upper, _ := layerDir(t)
	v := &fakeView{}
	var s Set
	if _, err := s.Pin(ctx, upper, Options{View: v, Limit: Limit{MaxBytes: 1}}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("pin over the limit: %v, want ErrTooLarge", err)
	}
	if _, err := s.Pin(ctx, upper+"/../fs", Options{View: v}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("pin of an unclean path: %v, want invalid argument", err)
	}
	if v.prepared != 0 || len(s.Pinned()) != 0 {
		t.Errorf("refused pins made %d copies, left %v", v.prepared, s.Pinned())
	}
}

// fakeView is Served with hooks: it can fail Show and Release, and
// counts calls.
type fakeView struct {
	Served
	mu                       sync.Mutex
	prepared, shown, release int
	onShow                   func() error
	failRelease              int // how many releases fail
}

func (v *fakeView) Prepare(ctx context.Context, upper string) (string, error) {
	v.mu.Lock()
	v.prepared++
	v.mu.Unlock()
	return v.Served.Prepare(ctx, upper)
}

func (v *fakeView) Show(context.Context, string, string) error {
	v.mu.Lock()
	v.shown++
	v.mu.Unlock()
	if v.onShow != nil {
		return v.onShow()
	}
	return nil
}

func (v *fakeView) Release(ctx context.Context, upper, copyDir string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.release++
	if v.failRelease > 0 {
		v.failRelease--
		return errors.New("release failed")
	}
	return v.Served.Release(ctx, upper, copyDir)
}

// holdCopy makes the pins' copies wait, once started, until their
// context ends, as a long copy would, and says when one has started.
func holdCopy(t *testing.T) <-chan struct{} {
	started := make(chan struct{}, 1)
	copyTree = func(ctx context.Context, src, dst string) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	t.Cleanup(func() { copyTree = Copy })
	return started
}

// TestPinRacingUnpin unpins a layer while its pin copies it: the copy is
// cancelled, Pin fails with ErrUnpinned, and once Unpin returns nothing
// of the pin is left.
func TestPinRacingUnpin(t *testing.T) {
	ctx := logtest.WithT(context.Background(), t)
	upper, copies := layerDir(t)
	started := holdCopy(t)
	v := &fakeView{Served: Served{Dir: copies}}
	var s Set
	pinned := make(chan error, 1)
	go func() {
		_, err := s.Pin(ctx, upper, Options{View: v})
		pinned <- err
	}()
	<-started
	if len(s.Pinned()) != 1 {
		t.Fatal("a pin being copied is not registered")
	}
	must(t, s.Unpin(ctx, upper))
	// Unpin returned: the pin's own cleanup is done.
	requireEmpty(t, copies)
	if len(s.Pinned()) != 0 {
		t.Errorf("left registered: %v", s.Pinned())
	}
	if err := <-pinned; !errors.Is(err, ErrUnpinned) {
		t.Errorf("pin unpinned during its copy: %v, want ErrUnpinned", err)
	}
	if v.shown != 0 {
		t.Error("an unpinned copy was shown")
	}
}

// TestPinCallerGivesUp ends the caller's context during the copy, and
// after the copy just before Pin returns: either way Pin fails and
// nothing is left.
func TestPinCallerGivesUp(t *testing.T) {
	t.Run("during the copy", func(t *testing.T) {
		upper, copies := layerDir(t)
		started := holdCopy(t)
		ctx, cancel := context.WithCancel(logtest.WithT(context.Background(), t))
		go func() { <-started; cancel() }()
		var s Set
		if _, err := s.Pin(ctx, upper, Options{View: Served{Dir: copies}}); !errors.Is(err, context.Canceled) {
			t.Errorf("pin: %v, want canceled", err)
		}
		requireEmpty(t, copies)
		if len(s.Pinned()) != 0 {
			t.Errorf("left registered: %v", s.Pinned())
		}
	})
	t.Run("after the copy", func(t *testing.T) {
		upper, copies := layerDir(t)
		ctx, cancel := context.WithTimeout(logtest.WithT(context.Background(), t), time.Hour)
		v := &fakeView{Served: Served{Dir: copies}, onShow: func() error { cancel(); return nil }}
		var s Set
		if _, err := s.Pin(ctx, upper, Options{View: v}); !errors.Is(err, context.Canceled) {
			t.Errorf("pin: %v, want canceled", err)
		}
		requireEmpty(t, copies)
		if len(s.Pinned()) != 0 || v.release != 1 {
			t.Errorf("left registered: %v; %d releases", s.Pinned(), v.release)
		}
	})
}

// TestPinFailedShow releases what a pin made when its view cannot show it.
func TestPinFailedShow(t *testing.T) {
	ctx := logtest.WithT(context.Background(), t)
	upper, copies := layerDir(t)
	v := &fakeView{Served: Served{Dir: copies}, onShow: func() error { return errors.New("no mount") }}
	var s Set
	if _, err := s.Pin(ctx, upper, Options{View: v}); err == nil {
		t.Fatal("pin with a failing view succeeded")
	}
	requireEmpty(t, copies)
	if len(s.Pinned()) != 0 {
		t.Errorf("left registered: %v", s.Pinned())
	}
}

// TestUnpinFailedRelease keeps a pin whose release failed known, no
// longer shown, for the next Unpin to release.
func TestUnpinFailedRelease(t *testing.T) {
	ctx := logtest.WithT(context.Background(), t)
	upper, copies := layerDir(t)
	v := &fakeView{Served: Served{Dir: copies}, failRelease: 1}
	var s Set
	_, err := s.Pin(ctx, upper, Options{View: v})
	must(t, err)
	if err := s.Unpin(ctx, upper); err == nil {
		t.Fatal("unpin with a failing release succeeded")
	}
	if _, ok := s.Copy(upper); ok || len(s.Pinned()) != 1 {
		t.Errorf("after a failed release: shown %v, known %v", ok, s.Pinned())
	}
	if _, err := s.Pin(ctx, upper, Options{View: v}); err != nil {
		t.Fatalf("pin after a failed release (released first): %v", err)
	}
	must(t, s.Unpin(ctx, upper))
	requireEmpty(t, copies)
}

// TestPinTTL lets a pin expire: it is released as by Unpin.
func TestPinTTL(t *testing.T) {
	ctx := logtest.WithT(context.Background(), t)
	upper, copies := layerDir(t)
	var s Set
	_, err := s.Pin(ctx, upper, Options{View: Served{Dir: copies}, TTL: time.Millisecond})
	must(t, err)
	for deadline := time.Now().Add(10 * time.Second); len(s.Pinned()) != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the pin did not expire")
		}
	}
	requireEmpty(t, copies)
}
