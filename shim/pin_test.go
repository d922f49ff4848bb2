//go:build linux

package shim

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/settings"
	"github.com/precopy/precopy/snapshotter/pin"
	"github.com/precopy/precopy/snapshotter/pinservice"
)

// fakePinner is precopyd's pins service: it records pins, and fails a
// Pin after recording it when told to (a call that timed out after the
// copy).
type fakePinner struct {
	mu       sync.Mutex
	pinned   map[string]bool
	failPins bool
}

func (f *fakePinner) Pin(_ context.Context, upper string, _ time.Duration) (pin.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pinned[upper] = true
	if f.failPins {
		return pin.Result{}, errors.New("deadline exceeded after the copy")
	}
	return pin.Result{Cost: time.Millisecond}, nil
}

func (f *fakePinner) Unpin(_ context.Context, upper string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pinned, upper)
	return nil
}

func (f *fakePinner) holds(upper string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pinned[upper]
}

func servePins(t *testing.T, p pinservice.Pinner) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "precopyd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pinservice.Register(srv, p, time.Minute)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock
}

// TestPinBookkeeping: a pin is released by unpin; a Pin that failed on
// the shim's side is released at once, in case precopyd made it; an
// unpin precopyd never heard of is kept as held, to be tried again.
func TestPinBookkeeping(t *testing.T) {
	ctx := context.Background()
	f := &fakePinner{pinned: map[string]bool{}}
	sock := servePins(t, f)
	s := New(nil, settings.Settings{})
	c := &container{id: "c1", upper: "/pd/snapshots/7/fs"}
	c.settings.PrecopydAddress = sock

	var th precopy.Thaw
	if !s.pinRootfs(ctx, c, &th) || !c.pinned || !th.Pinned || !f.holds(c.upper) {
		t.Fatalf("pin: shim pinned %v, thaw %+v, precopyd holds %v", c.pinned, th, f.holds(c.upper))
	}
	s.unpin(ctx, c, "resumed")
	if c.pinned || f.holds(c.upper) {
		t.Fatalf("after unpin: shim pinned %v, precopyd holds %v", c.pinned, f.holds(c.upper))
	}

	f.failPins = true
	th = precopy.Thaw{}
	if s.pinRootfs(ctx, c, &th) || th.Pinned {
		t.Fatalf("a failed pin counted: %+v", th)
	}
	if c.pinned || f.holds(c.upper) {
		t.Fatalf("after a failed pin: shim pinned %v, precopyd holds %v", c.pinned, f.holds(c.upper))
	}

	gone := &container{id: "c2", upper: "/pd/snapshots/8/fs", pinned: true}
	gone.settings.PrecopydAddress = filepath.Join(t.TempDir(), "none.sock")
	s.unpin(ctx, gone, "resumed")
	if !gone.pinned {
		t.Fatal("an unpin precopyd did not get was forgotten")
	}
}
