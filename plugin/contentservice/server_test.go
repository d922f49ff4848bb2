package contentservice

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/precopy/precopy/plugin/memstore"
)

// serve serves store on a unix socket in a temporary directory and returns
// a client of it built as containerd builds its proxy plugins' clients
// (cmd/containerd/server: proxyClients.getClient).
func serve(t testing.TB, root string, store content.Store) (content.Store, func() error) {
	t.Helper()
	sock := filepath.Join(root, "content.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := NewServer(store)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	conn, err := dial(sock)
	if err != nil {
		srv.Stop()
		t.Fatal(err)
	}
	return proxy.NewContentStore(conn), func() error {
		conn.Close()
		srv.GracefulStop()
		return <-served
	}
}

// dial connects to a content service on sock as containerd connects to a
// proxy plugin.
func dial(sock string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
			grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)))
}

// TestContentSuiteOverGRPC runs containerd's content store conformance
// suite on memstore as containerd sees it: through containerd's content
// service (contentserver) and containerd's proxy client.
func TestContentSuiteOverGRPC(t *testing.T) {
	testsuite.ContentSuite(t, "memstore-grpc", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		store, err := memstore.New()
		if err != nil {
			return nil, nil, nil, err
		}
		client, stop := serve(t, root, store)
		return ctx, client, stop, nil
	})
}

// TestLimitOverGRPC checks that a write refused for lack of room reaches a
// containerd client as resource exhausted, with the store's explanation,
// and that the ingest can then be aborted through the API.
func TestLimitOverGRPC(t *testing.T) {
	ctx := context.Background()
	store, err := memstore.New(memstore.WithLimit(1 << 20))
	if err != nil {
		t.Fatal(err)
	}
	client, stop := serve(t, t.TempDir(), store)
	defer stop()

	w, err := client.Writer(ctx, content.WithRef("big"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	_, err = w.Write(make([]byte, 1))
	w.Close()
	if !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), "content store full: 1 MiB of 1 MiB limit in use") {
		t.Fatalf("write past the limit: got %v, want resource exhausted saying the store is full", err)
	}
	if got := store.Metrics().IngestBytes; got != 1<<20 {
		t.Fatalf("ingest holds %d bytes, want %d", got, 1<<20)
	}
	if err := client.Abort(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if got := store.Metrics().UsedBytes; got != 0 {
		t.Fatalf("after abort %d bytes in use", got)
	}
}

// TestDigestBeforeCommitOverGRPC checks what containerd's walking differ
// relies on (plugins/diff/walking/differ.go): through the proxy, a writer's
// Digest() after its last write, before commit, is the digest of what was
// written, so every write's reply must carry it.
func TestDigestBeforeCommitOverGRPC(t *testing.T) {
	ctx := context.Background()
	store, err := memstore.New()
	if err != nil {
		t.Fatal(err)
	}
	client, stop := serve(t, t.TempDir(), store)
	defer stop()
	w, err := client.Writer(ctx, content.WithRef("diff"))
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("layer"), 20_000)
	for p := range slices.Chunk(data, 32<<10) {
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	dgst := w.Digest()
	if want := digest.FromBytes(data); dgst != want {
		t.Fatalf("digest before commit %q, want %s", dgst, want)
	}
	if err := w.Commit(ctx, 0, dgst); err != nil {
		t.Fatal(err)
	}
}
