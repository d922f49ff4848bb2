package pinservice

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	"github.com/precopy/precopy/snapshotter/pin"
)

type recorder struct{ pinned map[string]time.Duration }

// result is what recorder's pins return: numbers a float32 would not
// carry exactly.
var result = pin.Result{
	Size:  pin.Size{Bytes: 1<<40 + 1, ApparentBytes: 1<<41 + 3, Files: 100_003},
	Cost:  42*time.Millisecond + 7,
	Where: "/x/pins/pin-1",
}

func (r *recorder) Pin(_ context.Context, upper string, ttl time.Duration) (pin.Result, error) {
	switch upper {
	case "":
		return pin.Result{}, fmt.Errorf("no layer: %w", errdefs.ErrNotFound)
	case "/large":
		return pin.Result{}, fmt.Errorf("/large: 1GiB: %w", pin.ErrTooLarge)
	}
	r.pinned[upper] = ttl
	return result, nil
}

func (r *recorder) Unpin(_ context.Context, upper string) error {
	delete(r.pinned, upper)
	return nil
}

// TestOverSocket calls the service over a unix socket as the shim does:
// values, the ttl, the result and errdefs codes cross it.
func TestOverSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	r := &recorder{pinned: map[string]time.Duration{}}
	Register(s, r, time.Minute)
	go s.Serve(l)
	defer s.Stop()

	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	res, err := c.Pin(ctx, "/x/snapshots/1/fs")
	if err != nil || res != result || r.pinned["/x/snapshots/1/fs"] != time.Minute {
		t.Fatalf("pin: %+v, %v; pinned %v", res, err, r.pinned)
	}
	if _, err := c.Pin(ctx, ""); !errdefs.IsNotFound(err) {
		t.Errorf("pin of nothing: %v, want not found", err)
	}
	if _, err := c.Pin(ctx, "/large"); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "1GiB") {
		t.Errorf("pin over the limit: %v, want failed precondition saying the size", err)
	}
	if err := c.Unpin(ctx, "/x/snapshots/1/fs"); err != nil || len(r.pinned) != 0 {
		t.Errorf("unpin: %v; pinned %v", err, r.pinned)
	}

	gone, _ := Dial(filepath.Join(t.TempDir(), "none.sock"))
	defer gone.Close()
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := gone.Pin(tctx, "/x"); err == nil {
		t.Error("pin through a socket nobody serves succeeded")
	}
}
