package snapshotter

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// requireRoot skips t unless it runs as root: mounting a tmpfs needs it.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the snapshotter mounts a tmpfs, which needs root")
	}
}

func newSnapshotter(t *testing.T, root string, limit int64) *Snapshotter {
	t.Helper()
	sn, err := New(logtest.WithT(context.Background(), t), root, limit)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

// suiteName is the name the conformance suite knows overlay by: it skips
// renaming a lower directory for it, which overlayfs refuses (EXDEV)
// without redirect_dir.
const suiteName = "overlayfs"

// TestSnapshotterSuite runs containerd's snapshotter conformance suite on
// the snapshotter itself.
func TestSnapshotterSuite(t *testing.T) {
	requireRoot(t)
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(ctx, root, 256<<20)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}

// TestSnapshotterSuiteOverGRPC runs the suite on the snapshotter as
// containerd sees it: through containerd's snapshot service glue and
// containerd's proxy client, over a unix socket.
func TestSnapshotterSuiteOverGRPC(t *testing.T) {
	requireRoot(t)
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(ctx, filepath.Join(root, "sn"), 256<<20)
		if err != nil {
			return nil, nil, err
		}
		l, err := net.Listen("unix", filepath.Join(root, "sn.sock"))
		if err != nil {
			sn.Close()
			return nil, nil, err
		}
		srv := grpc.NewServer()
		snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
		go srv.Serve(l)
		conn, err := grpc.NewClient("unix://"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			srv.Stop()
			sn.Close()
			return nil, nil, err
		}
		return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "precopy"), func() error {
			conn.Close()
			srv.GracefulStop()
			return sn.Close()
		}, nil
	})
}

// TestFullTmpfs fills the tmpfs through a snapshot's mount and checks that
// the next Prepare is refused as resource exhausted, saying the storage is
// full, that snapshots already there stay intact, and that removing one
// makes room again.
func TestFullTmpfs(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(logtest.WithT(context.Background(), t), "test")
	sn := newSnapshotter(t, t.TempDir(), 1<<20)
	defer sn.Close()

	if _, err := sn.Prepare(ctx, "kept", ""); err != nil {
		t.Fatal(err)
	}
	kept := writeInto(t, ctx, sn, "kept", "file", 256<<10)
	if err := sn.Commit(ctx, "kept-committed", "kept"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "filler", "kept-committed"); err != nil {
		t.Fatal(err)
	}
	// No parent's lower dir to look through here: the upper dir of an
	// active snapshot is where its writes land.
	if err := fillUpper(t, ctx, sn, "filler"); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v, want ENOSPC", err)
	}

	_, err := sn.Prepare(ctx, "refused", "kept-committed")
	if !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), "snapshot storage full: 1MiB of 1MiB limit in use") {
		t.Fatalf("prepare on a full tmpfs: %v; want resource exhausted saying the storage is full", err)
	}
	if _, err := sn.Stat(ctx, "refused"); !errdefs.IsNotFound(err) {
		t.Errorf("refused prepare left a snapshot: %v", err)
	}
	if m, err := sn.Metrics(ctx); err != nil || m.PreparesRefused != 1 || m.UsedBytes != m.LimitBytes || m.LimitBytes != 1<<20 || m.Snapshots != 2 {
		t.Errorf("metrics on a full tmpfs: %+v, %v", m, err)
	}
	if got := readUpper(t, ctx, sn, "kept-committed", "file"); string(got) != string(kept) {
		t.Error("committed snapshot changed")
	}

	if err := sn.Remove(ctx, "filler"); err != nil {
		t.Fatalf("remove from a full tmpfs: %v", err)
	}
	if _, err := sn.Prepare(ctx, "fits", "kept-committed"); err != nil {
		t.Fatalf("prepare after remove: %v", err)
	}
}

// upperDir is where an active snapshot's writes land, or a committed
// one's files are: the bind mount's source, or the overlay's upperdir.
func upperDir(t *testing.T, ctx context.Context, sn *Snapshotter, key string) string {
	t.Helper()
	var mounts, err = sn.Mounts(ctx, key)
	if err != nil {
		// A committed snapshot has no mounts of its own: view it.
		view := key + "-view"
		if mounts, err = sn.View(ctx, view, key); err != nil {
			t.Fatal(err)
		}
		defer sn.Remove(ctx, view)
	}
	m := mounts[0]
	if m.Type == "bind" {
		return m.Source
	}
	for _, o := range m.Options {
		if dir, ok := strings.CutPrefix(o, "upperdir="); ok {
			return dir
		}
	}
	t.Fatalf("no upper dir in %+v", m)
	return ""
}

func writeInto(t *testing.T, ctx context.Context, sn *Snapshotter, key, name string, size int) []byte {
	t.Helper()
	data := []byte(strings.Repeat("k", size))
	if err := os.WriteFile(filepath.Join(upperDir(t, ctx, sn, key), name), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

func readUpper(t *testing.T, ctx context.Context, sn *Snapshotter, key, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(upperDir(t, ctx, sn, key), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fillUpper writes into snapshot key until the tmpfs is full and returns
// the error that stopped it.
func fillUpper(t *testing.T, ctx context.Context, sn *Snapshotter, key string) error {
	t.Helper()
	f, err := os.Create(filepath.Join(upperDir(t, ctx, sn, key), "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for range 64 {
		if _, err := f.Write(chunk); err != nil {
			return err
		}
	}
	return nil
}

// TestRestartDiscardsStaleState checks that a snapshotter started where an
// earlier one died (tmpfs still mounted, metadata still there) detaches
// the old tmpfs, starts empty, and that Close leaves nothing mounted.
func TestRestartDiscardsStaleState(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(logtest.WithT(context.Background(), t), "test")
	root := t.TempDir()
	fsDir := filepath.Join(root, tmpfsDir)

	dead := newSnapshotter(t, root, 1<<20)
	if _, err := dead.Prepare(ctx, "lost", ""); err != nil {
		t.Fatal(err)
	}
	// Die without unmounting: close only the metadata.
	dead.Snapshotter.Close()
	defer unix.Unmount(fsDir, unix.MNT_DETACH) // if the test fails early

	sn := newSnapshotter(t, root, 2<<20)
	if _, err := sn.Stat(ctx, "lost"); !errdefs.IsNotFound(err) {
		t.Errorf("snapshot of a dead predecessor: %v, want not found", err)
	}
	if m, err := sn.Metrics(ctx); err != nil || m.LimitBytes != 2<<20 || m.Snapshots != 0 {
		t.Errorf("metrics after restart: %+v, %v", m, err)
	}
	if n := countMounts(t, fsDir); n != 1 {
		t.Errorf("%d mounts on %s, want 1 (the stale one detached)", n, fsDir)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	if n := countMounts(t, fsDir); n != 0 {
		t.Errorf("%d mounts left on %s after Close", n, fsDir)
	}
}

// TestFailedStartLeavesNothingMounted makes the overlay snapshotter fail
// after the tmpfs is mounted and checks that the tmpfs is gone again.
func TestFailedStartLeavesNothingMounted(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	// A directory where the metadata file goes makes bolt fail to open
	// it, after the tmpfs is mounted.
	if err := os.MkdirAll(filepath.Join(root, metadataFile, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := New(logtest.WithT(context.Background(), t), root, 1<<20)
	if err == nil {
		t.Fatal("started with a directory for its metadata file")
	}
	if n := countMounts(t, filepath.Join(root, tmpfsDir)); n != 0 {
		t.Errorf("failed start left %d mounts", n)
	}
}

func countMounts(t *testing.T, dir string) int {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	return len(ms)
}

func TestNonPositiveLimit(t *testing.T) {
	if _, err := New(context.Background(), t.TempDir(), 0); !errdefs.IsInvalidArgument(err) {
		t.Errorf("limit 0: %v, want invalid argument", err)
	}
}
