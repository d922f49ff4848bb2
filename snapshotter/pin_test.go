package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
)

// TestPin checks that a pinned writable layer is served to Mounts as it
// was when pinned (new files, changed files, deletions of the parent's
// files) while the live layer goes on changing, and that every way a pin
// ends puts the live layer back.
func TestPin(t *testing.T) {
	requireRoot(t)
	ctx := logtest.WithT(context.Background(), t)
	sn := newSnapshotter(t, t.TempDir(), 64<<20)
	defer sn.Close()

	// A parent layer with two files, and a container's layer on it.
	if _, err := sn.Prepare(ctx, "base-active", ""); err != nil {
		t.Fatal(err)
	}
	writeInto(t, ctx, sn, "base-active", "kept", 3)
	writeInto(t, ctx, sn, "base-active", "deleted", 3)
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	live, err := sn.Prepare(ctx, "ctr", "base")
	if err != nil {
		t.Fatal(err)
	}
	upper := upperOf(live[0])
	withMounted(t, live, func(root string) {
		must(t, os.WriteFile(filepath.Join(root, "status"), []byte("at-dump"), 0o644))
		must(t, os.Remove(filepath.Join(root, "deleted"))) // a whiteout in the upper dir
	})

	if _, err := sn.Pin(ctx, "/not/a/layer", time.Minute); !errdefs.IsNotFound(err) {
		t.Errorf("pin of a foreign dir: %v, want not found", err)
	}
	if _, err := sn.Pin(ctx, upper, time.Minute); err != nil {
		t.Fatal(err)
	}
	// The container runs on after the thaw.
	withMounted(t, live, func(root string) {
		must(t, os.WriteFile(filepath.Join(root, "status"), []byte("after-thaw"), 0o644))
		must(t, os.WriteFile(filepath.Join(root, "new"), []byte("x"), 0o644))
	})

	pinned, err := sn.Mounts(ctx, "ctr")
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, pinned, func(root string) {
		requireFile(t, root, "status", "at-dump")
		requireFile(t, root, "kept", "kkk")
		requireAbsent(t, root, "deleted")
		requireAbsent(t, root, "new")
		if err := os.WriteFile(filepath.Join(root, "x"), nil, 0o644); err == nil {
			t.Error("the pinned view is writable")
		}
	})

	must(t, sn.Unpin(ctx, upper))
	requireLive(t, ctx, sn)

	// A pin times out ...
	if _, err := sn.Pin(ctx, upper, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); sn.Pinned(upper); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the pin did not time out")
		}
	}
	requireLive(t, ctx, sn)
	// ... and goes with its snapshot.
	if _, err := sn.Pin(ctx, upper, time.Minute); err != nil {
		t.Fatal(err)
	}
	must(t, sn.Remove(ctx, "ctr"))
	if sn.Pinned(upper) {
		t.Error("the pin outlived its snapshot")
	}
	if entries, _ := os.ReadDir(filepath.Join(sn.fsDir, pinsDir)); len(entries) != 0 {
		t.Errorf("pinned copies left: %v", entries)
	}
}

func requireLive(t *testing.T, ctx context.Context, sn *Snapshotter) {
	t.Helper()
	m, err := sn.Mounts(ctx, "ctr")
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, m, func(root string) { requireFile(t, root, "status", "after-thaw") })
}

func withMounted(t *testing.T, m []mount.Mount, fn func(root string)) {
	t.Helper()
	if err := mount.WithTempMount(context.Background(), m, func(root string) error {
		fn(root)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func requireFile(t *testing.T, root, name, want string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil || string(b) != want {
		t.Errorf("%s: %q, %v; want %q", name, b, err, want)
	}
}

func requireAbsent(t *testing.T, root, name string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(root, name)); !os.IsNotExist(err) {
		t.Errorf("%s: %v, want it absent", name, err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestPinCallerGone: a pin whose caller has given up (the shim's call
// timed out) leaves nothing, so that no stale copy is served later.
func TestPinCallerGone(t *testing.T) {
	requireRoot(t)
	ctx := logtest.WithT(context.Background(), t)
	sn := newSnapshotter(t, t.TempDir(), 64<<20)
	defer sn.Close()
	live, err := sn.Prepare(ctx, "ctr", "")
	must(t, err)
	upper := upperOf(live[0])
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := sn.Pin(gone, upper, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("pin for a caller gone: %v, want canceled", err)
	}
	if sn.Pinned(upper) {
		t.Error("pinned for a caller gone")
	}
	if entries, _ := os.ReadDir(filepath.Join(sn.fsDir, pinsDir)); len(entries) != 0 {
		t.Errorf("pinned copies left: %v", entries)
	}
}
