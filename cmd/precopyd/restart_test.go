package main

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	snproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// running is a precopyd serving in the test.
type running struct {
	d      *daemon
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	served chan error
}

// start starts precopyd with cfg and connects to it as containerd does.
func start(t *testing.T, cfg config) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(logtest.WithT(context.Background(), t))
	d, err := newDaemon(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	r := &running{d: d, cancel: cancel, served: make(chan error, 1)}
	go func() { r.served <- d.serve(ctx) }()
	r.conn, err = grpc.NewClient("unix://"+cfg.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.stop(t)
		t.Fatal(err)
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) content() content.Store { return proxy.NewContentStore(r.conn) }

// stop stops precopyd as SIGTERM does; stopping twice is harmless.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.conn.Close()
	r.cancel()
	r.cancel = nil
	if err := <-r.served; err != nil {
		t.Errorf("precopyd stopped with %v", err)
	}
}

func put(t *testing.T, cs content.Store, data []byte) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{Size: int64(len(data)), Digest: digest.FromBytes(data)}
	if err := content.WriteBlob(context.Background(), cs, desc.Digest.String(), bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}
	return desc
}

func restartConfig(t *testing.T) config {
	dir := t.TempDir()
	return config{address: filepath.Join(dir, "run", "precopyd.sock"), stateDir: filepath.Join(dir, "state")}
}

// TestRestartMemoryOnly restarts precopyd without a persist dir: the
// content is gone, and asking for it fails with not found saying why; the
// restart after that has nothing more to report lost.
func TestRestartMemoryOnly(t *testing.T) {
	ctx := context.Background()
	cfg := restartConfig(t)
	r := start(t, cfg)
	desc := put(t, r.content(), []byte("held in memory only"))
	r.stop(t)

	r = start(t, cfg)
	_, err := content.ReadBlob(ctx, r.content(), desc)
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "lost when precopyd restarted: it held content in memory only") {
		t.Fatalf("reading content lost in a restart: %v; want not found saying it was lost", err)
	}
	if m := r.d.content.store.Metrics(); m.Blobs != 0 {
		t.Errorf("restarted store holds %d blobs", m.Blobs)
	}
	// Committed again, it is found again.
	put(t, r.content(), []byte("held in memory only"))
	r.stop(t)
}

// TestRestartWithPersistDir restarts precopyd with a persist dir: every
// blob is back, byte for byte, with its labels, and the dir and files are
// for root only.
func TestRestartWithPersistDir(t *testing.T) {
	ctx := context.Background()
	cfg := restartConfig(t)
	cfg.persistDir = filepath.Join(t.TempDir(), "persist")
	r := start(t, cfg)
	cs := r.content()
	big := bytes.Repeat([]byte("checkpoint "), 300_000) // over one gRPC message
	descs := []ocispec.Descriptor{put(t, cs, []byte("small")), put(t, cs, big), put(t, cs, []byte("deleted"))}
	if _, err := cs.Update(ctx, content.Info{Digest: descs[0].Digest, Labels: map[string]string{"precopy/kind": "test"}}, "labels"); err != nil {
		t.Fatal(err)
	}
	if err := cs.Delete(ctx, descs[2].Digest); err != nil {
		t.Fatal(err)
	}
	r.stop(t) // writes everything owed

	checkMode(t, cfg.persistDir, fs.ModeDir|0o700)
	filepath.WalkDir(cfg.persistDir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			checkMode(t, p, 0o600)
		}
		return nil
	})

	r = start(t, cfg)
	cs = r.content()
	for i, want := range [][]byte{[]byte("small"), big} {
		got, err := content.ReadBlob(ctx, cs, descs[i])
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("blob %d after restart: %d bytes, %v", i, len(got), err)
		}
	}
	if info, err := cs.Info(ctx, descs[0].Digest); err != nil || info.Labels["precopy/kind"] != "test" {
		t.Errorf("labels after restart: %v, %v", info.Labels, err)
	}
	if _, err := cs.Info(ctx, descs[2].Digest); !errdefs.IsNotFound(err) {
		t.Errorf("deleted blob after restart: %v, want not found", err)
	}
	if m := r.d.content.store.Metrics(); m.Blobs != 2 {
		t.Errorf("restarted store holds %d blobs, want 2", m.Blobs)
	}
}

// TestDaemonSnapshotter serves the snapshotter beside the content store on
// one socket, and checks that stopping precopyd unmounts its tmpfs.
func TestDaemonSnapshotter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the snapshotter mounts a tmpfs, which needs root")
	}
	ctx := namespaces.WithNamespace(context.Background(), "test")
	cfg := restartConfig(t)
	cfg.snapshotLimit = 4 << 20
	r := start(t, cfg)
	fsDir := filepath.Join(cfg.stateDir, snapshotterDir, "fs")
	if mounted, err := mountinfo.Mounted(fsDir); err != nil || !mounted {
		t.Fatalf("tmpfs at %s: mounted %v, %v", fsDir, mounted, err)
	}

	sn := snproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(r.conn), "precopy")
	if _, err := sn.Prepare(ctx, "rw", ""); err != nil {
		t.Fatal(err)
	}
	put(t, r.content(), []byte("beside a snapshot"))
	m, err := r.d.snapshots.Metrics(ctx)
	if err != nil || m.Snapshots != 1 || m.LimitBytes != 4<<20 {
		t.Errorf("snapshotter metrics %+v, %v", m, err)
	}

	r.stop(t)
	if mounted, err := mountinfo.Mounted(fsDir); err != nil || mounted {
		t.Errorf("tmpfs at %s after stop: mounted %v, %v", fsDir, mounted, err)
	}
}
