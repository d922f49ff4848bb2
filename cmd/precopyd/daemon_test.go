package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestDaemon starts precopyd's server on a socket in a directory it must
// create, checks that only root can reach it, stores a blob through it as
// containerd would, reads the metrics, and stops it.
func TestDaemon(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "precopyd")
	sock := filepath.Join(dir, "precopyd.sock")
	cfg := config{address: sock, stateDir: filepath.Join(t.TempDir(), "state"), contentLimit: 1 << 20, debugAddress: "127.0.0.1:0"}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := newDaemon(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- d.serve(ctx) }()

	checkMode(t, dir, fs.ModeDir|0o700)
	checkMode(t, sock, fs.ModeSocket|0o600)

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	blob := []byte("stored through precopyd")
	desc := ocispec.Descriptor{Size: int64(len(blob)), Digest: digest.FromBytes(blob)}
	if err := content.WriteBlob(ctx, proxy.NewContentStore(conn), "t", bytes.NewReader(blob), desc); err != nil {
		t.Fatal(err)
	}

	resp, err := http.Get("http://" + d.debugL.Addr().String() + "/metrics.json")
	if err != nil {
		t.Fatal(err)
	}
	var m metrics
	err = json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if c := m.Content; c.Blobs != 1 || c.UsedBytes != desc.Size || c.LimitBytes != 1<<20 || m.Snapshots != nil || m.Persist != nil {
		t.Errorf("metrics %+v", m)
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(stopTimeout + 5*time.Second):
		t.Fatal("precopyd did not stop")
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func checkMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != want {
		t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
	}
}

// TestStaleSocket checks that a socket left by a dead daemon is replaced,
// while a live one, or a file that is no socket, is left alone.
func TestStaleSocket(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := filepath.Join(t.TempDir(), "precopyd.sock")
	state := filepath.Join(t.TempDir(), "state")

	// A socket whose listener is gone without unlinking it is stale.
	d, err := newDaemon(ctx, config{address: sock, stateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	d.listener.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	d.listener.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("no stale socket to test with: %v", err)
	}

	d.closeStores(ctx)
	d, err = newDaemon(ctx, config{address: sock, stateDir: state})
	if err != nil {
		t.Fatalf("replacing a stale socket: %v", err)
	}
	defer d.listener.Close()
	defer d.closeStores(ctx)
	if _, err := newDaemon(ctx, config{address: sock, stateDir: state}); err == nil {
		t.Fatal("took over a socket in use")
	}

	notSocket := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notSocket, nil, 0o600)
	if _, err := newDaemon(ctx, config{address: notSocket, stateDir: state}); err == nil {
		t.Fatal("removed a file that is not a socket")
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1048576": 1 << 20, "512MiB": 512 << 20, "2GiB": 2 << 30, "1.5gi": 3 << 29, "2GB": 2e9, "1.5g": 1.5e9} {
		var b byteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "-1", "12 parsecs"} {
		var b byteSize
		if err := b.Set(in); err == nil {
			t.Errorf("Set(%q) accepted", in)
		}
	}
	// What the flag prints as its default reads back as the same size.
	for _, n := range []byteSize{512 << 20, 3 << 29} {
		var b byteSize
		if err := b.Set(n.String()); err != nil || b != n {
			t.Errorf("Set(%q) = %d, %v; want %d", n.String(), b, err, n)
		}
	}
}

// TestListenerMode checks the mode the listener creates the socket with,
// under the most permissive umask and in a directory anyone can enter and
// write (as /tmp): 0600 from the start, not only after a chmod.
func TestListenerMode(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "precopyd.sock")
	l, err := listenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	checkMode(t, sock, fs.ModeSocket|0o600)
	// The umask is the process's own again.
	if got := unix.Umask(0); got != 0 {
		t.Errorf("umask left at %#o", got)
	}
}

// TestStateDirRefused checks that precopyd creates a missing state dir
// 0700 and refuses one others can read or write, or that another user
// owns.
func TestStateDirRefused(t *testing.T) {
	ctx := context.Background()
	sock := filepath.Join(t.TempDir(), "precopyd.sock")
	missing := filepath.Join(t.TempDir(), "a", "state")
	d, err := newDaemon(ctx, config{address: sock, stateDir: missing})
	if err != nil {
		t.Fatal(err)
	}
	d.listener.Close()
	d.closeStores(ctx)
	checkMode(t, missing, fs.ModeDir|0o700)

	for _, tc := range []struct {
		mode fs.FileMode
		uid  int
		ok   bool
	}{
		{0o700, 0, true}, {0o711, 0, true},
		{0o755, 0, false}, {0o770, 0, false}, {0o707, 0, false}, {0o740, 0, false},
		{0o700, 1, false},
	} {
		dir := t.TempDir()
		if err := os.Chmod(dir, tc.mode); err != nil {
			t.Fatal(err)
		}
		uid := os.Geteuid() + tc.uid
		if err := os.Chown(dir, uid, -1); err != nil {
			t.Fatal(err)
		}
		d, err := newDaemon(ctx, config{address: sock, stateDir: dir})
		if err == nil {
			d.listener.Close()
			d.closeStores(ctx)
		}
		if tc.ok && err != nil {
			t.Errorf("state dir %v owned by uid %d refused: %v", tc.mode, uid, err)
		}
		if !tc.ok && (err == nil || !strings.Contains(err.Error(), "others could read or change")) {
			t.Errorf("state dir %v owned by uid %d: got %v, want it refused", tc.mode, uid, err)
		}
		os.Chown(dir, os.Geteuid(), -1) // for t.TempDir's cleanup
	}
}
