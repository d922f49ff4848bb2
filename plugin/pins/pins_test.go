package pins

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
)

type recorder struct{ pinned map[string]time.Duration }

func (r *recorder) Pin(_ context.Context, upper string, ttl time.Duration) (time.Duration, error) {
	if upper == "" {
		return 0, fmt.Errorf("no layer: %w", errdefs.ErrNotFound)
	}
	r.pinned[upper] = ttl
	return 42 * time.Millisecond, nil
}

func (r *recorder) Unpin(_ context.Context, upper string) error {
	delete(r.pinned, upper)
	return nil
}

// TestOverSocket calls the service over a unix socket as the shim does:
// values, the ttl and errdefs codes cross it.
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
	cost, err := c.Pin(ctx, "/x/snapshots/1/fs")
	if err != nil || cost != 42*time.Millisecond || r.pinned["/x/snapshots/1/fs"] != time.Minute {
		t.Fatalf("pin: cost %v, %v; pinned %v", cost, err, r.pinned)
	}
	if _, err := c.Pin(ctx, ""); !errdefs.IsNotFound(err) {
		t.Errorf("pin of nothing: %v, want not found", err)
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
