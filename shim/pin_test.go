//go:build linux

package shim

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	"github.com/precopy/precopy/precopy/settings"

	"github.com/precopy/precopy/snapshotter/pin"
	"github.com/precopy/precopy/snapshotter/pinservice"
)

// TestEarlyThawPinReleased: a writable layer pinned for an early thaw is
// released on every path that ends the checkpoint: the client's Resume,
// Delete, the next Pause; a pin that failed is released at once.
func TestEarlyThawPinReleased(t *testing.T) {
	for _, end := range []string{"resume", "delete", "next pause"} {
		t.Run(end, func(t *testing.T) {
			h := newHarness(t, nil, false)
			th := h.pausedCheckpoint().Thaw
			if !th.Early || !th.Pinned || th.PinWhere != "precopyd" || th.PinBytes != 4096 || th.PinFiles != 1 || th.PinCost != time.Millisecond {
				t.Fatalf("thaw %+v, want early on a pinned layer", th)
			}
			if !h.pins.holds(h.upper) {
				t.Fatal("no pin held after the checkpoint")
			}
			h.phaseIs(thawedEarly)
			var err error
			switch end {
			case "resume":
				err = h.resume()
			case "delete":
				err = h.delete()
			case "next pause":
				h.look()
				err = h.pause()
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.pins.holds(h.upper) {
				t.Errorf("the pin outlived the %s", end)
			}
		})
	}
}

func TestFailedPinReleasedAtOnce(t *testing.T) {
	h := newHarness(t, nil, false)
	h.pins.failPin = true
	if th := h.pausedCheckpoint().Thaw; th.Early || th.Pinned || !strings.Contains(th.Reason, "pinning it failed: deadline exceeded") {
		t.Errorf("thaw %+v, want none, saying why", th)
	}
	if h.pins.holds(h.upper) || h.container().pinned {
		t.Error("a failed pin is held")
	}
	h.phaseIs(idle)
}

// TestUnpinRetried: an unpin the pinner did not get is kept as held, and
// tried again at the next chance.
func TestUnpinRetried(t *testing.T) {
	h := newHarness(t, nil, false)
	h.pausedCheckpoint()
	h.pins.failUnpin = true
	if err := h.resume(); err != nil {
		t.Fatal(err)
	}
	if !h.container().pinned || !h.pins.holds(h.upper) {
		t.Fatal("an unpin the pinner did not get was forgotten")
	}
	h.pins.failUnpin = false
	if err := h.delete(); err != nil {
		t.Fatal(err)
	}
	if h.pins.holds(h.upper) {
		t.Error("the pin outlived the container")
	}
}

// fakePins is precopyd's pins service.
type fakePins struct {
	mu     sync.Mutex
	pinned map[string]bool
}

func (f *fakePins) Pin(_ context.Context, upper string, _ time.Duration) (pin.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.Contains(upper, "large") {
		return pin.Result{}, pin.ErrTooLarge
	}
	f.pinned[upper] = true
	return pin.Result{Size: pin.Size{Bytes: 8192, Files: 2}, Cost: time.Millisecond, Where: "/pins/1"}, nil
}

func (f *fakePins) Unpin(_ context.Context, upper string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pinned, upper)
	return nil
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

// TestPrecopydPinner pins through precopyd's pins service.
func TestPrecopydPinner(t *testing.T) {
	ctx := t.Context()
	f := &fakePins{pinned: map[string]bool{}}
	sock := servePins(t, f)
	p := newPrecopydPinner(sock)
	res, err := p.Pin(ctx, "/s/7/fs")
	if err != nil || res.Cost != time.Millisecond || res.Bytes != 8192 || res.Files != 2 || res.Where != "precopyd "+sock+": /pins/1" || !f.pinned["/s/7/fs"] {
		t.Fatalf("pin: %+v, %v", res, err)
	}
	if err := p.Unpin(ctx, "/s/7/fs"); err != nil || f.pinned["/s/7/fs"] {
		t.Fatalf("unpin: %v", err)
	}
	if _, err := p.Pin(ctx, "/s/large/fs"); err == nil || !strings.Contains(err.Error(), "too large to pin") || !strings.Contains(err.Error(), sock) {
		t.Errorf("a refused pin: %v, want precopyd's reason", err)
	}
	gone := newPrecopydPinner(filepath.Join(t.TempDir(), "none.sock"))
	if _, err := gone.Pin(ctx, "/s/8/fs"); err == nil || !strings.Contains(err.Error(), "no socket") {
		t.Errorf("pin without precopyd: %v", err)
	}
	if err := gone.Unpin(ctx, "/s/8/fs"); err == nil {
		t.Error("unpin without precopyd succeeded")
	}
}

// TestLayerPinner: a layer precopyd does not have (not found) or cannot
// be asked about (unavailable) is pinned by the shim's own pinner, and
// unpinned there; a layer precopyd refuses for another reason (too large)
// is not pinned at all, and the report says precopyd's reason.
func TestLayerPinner(t *testing.T) {
	for _, tc := range []struct {
		name      string
		precopyd  error
		wantLocal bool
	}{
		{"not precopyd's layer", fmt.Errorf("layer: %w", errdefs.ErrNotFound), true},
		{"precopyd unreachable", fmt.Errorf("precopyd: no socket: %w", errdefs.ErrUnavailable), true},
		{"too large for precopyd", fmt.Errorf("layer: %w", pin.ErrTooLarge), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, false)
			h.pins.refuse = tc.precopyd
			th := h.pausedCheckpoint().Thaw
			if th.Early != tc.wantLocal || th.Pinned != tc.wantLocal || h.local.holds(h.upper) != tc.wantLocal {
				t.Fatalf("thaw %+v, shim's pin held %v; want the shim's pin: %v", th, h.local.holds(h.upper), tc.wantLocal)
			}
			if !tc.wantLocal {
				if !strings.Contains(th.Reason, "too large") {
					t.Errorf("thaw reason %q does not say precopyd's", th.Reason)
				}
				return
			}
			if !strings.HasPrefix(th.PinWhere, pinnedByShim) {
				t.Errorf("pin_where %q, want the shim's", th.PinWhere)
			}
			if err := h.resume(); err != nil {
				t.Fatal(err)
			}
			if h.local.holds(h.upper) {
				t.Error("the shim's pin outlived the client's Resume")
			}
		})
	}
}

// TestPinLimitZeroNeverPins: io.precopy.pin-limit=0 turns pins off: a
// writable rootfs then stays frozen until the client's Resume.
func TestPinLimitZeroNeverPins(t *testing.T) {
	h := newHarness(t, map[string]string{settings.AnnotationPinLimit: "0"}, false)
	th := h.pausedCheckpoint().Thaw
	if th.Early || th.Pinned || h.local.holds(h.upper) || h.pins.holds(h.upper) {
		t.Errorf("thaw %+v with pin-limit 0, want no pin and no early thaw", th)
	}
}

// TestDefaultPinLimit: the settings' default pin limit is the one the pin
// package derived from its measured copy rates.
func TestDefaultPinLimit(t *testing.T) {
	if settings.DefaultPinLimit != pin.DefaultMaxCopyTime {
		t.Errorf("settings.DefaultPinLimit %v, pin.DefaultMaxCopyTime %v", settings.DefaultPinLimit, pin.DefaultMaxCopyTime)
	}
	if got, want := pinLimit(pin.DefaultMaxCopyTime), pin.DefaultLimit; got != want {
		t.Errorf("pinLimit(default) %+v, pin.DefaultLimit %+v", got, want)
	}
}
