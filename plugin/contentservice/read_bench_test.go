package contentservice

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/plugin/memstore"
)

// BenchmarkReadOverGRPC reads a blob back the way containerd's task
// service does when it restores a checkpoint (plugins/services/tasks/
// local.go, Create: archive.Apply over content.NewReader of the store's
// ReaderAt), and the CRI plugin when it packs one: sequential reads of
// 32 KiB, each of which containerd's proxy ReaderAt turns into a Read call
// of its own (a gRPC stream).
//
// With PRECOPY_BENCH_CONTENT_SOCKET it reads from the content service on
// that socket (a precopyd) instead, across processes as containerd does.
func BenchmarkReadOverGRPC(b *testing.B) {
	if sock := os.Getenv("PRECOPY_BENCH_CONTENT_SOCKET"); sock != "" {
		conn, err := dial(sock)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		client := proxy.NewContentStore(conn)
		b.Run("32KiB-reads", func(b *testing.B) { readBlobs(b, client, nil) })
		b.Run("one-call", func(b *testing.B) { readBlobs(b, client, contentapi.NewContentClient(conn)) })
		return
	}
	store, err := memstore.New()
	if err != nil {
		b.Fatal(err)
	}
	client, stop := serve(b, b.TempDir(), store)
	defer stop()
	b.Run("32KiB-reads", func(b *testing.B) { readBlobs(b, client, nil) })
}

// readBlobs reads a blob from client, 32 KiB at a time as containerd's
// restore does, or, given api, in one Read call streaming the whole blob:
// what containerd's proxy would do with the upstream change (docs/storage).
func readBlobs(b *testing.B, client content.Store, api contentapi.ContentClient) {
	ctx := context.Background()
	blob := bytes.Repeat([]byte("precopy!"), blobMiB()<<17)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	if err := content.WriteBlob(ctx, client, "bench-read", bytes.NewReader(blob), desc); err != nil {
		b.Fatal(err)
	}
	defer client.Delete(ctx, desc.Digest)
	buf := make([]byte, 32<<10)
	b.SetBytes(desc.Size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if api != nil {
			if n, err := readOneCall(ctx, api, desc.Digest); err != nil || n != desc.Size {
				b.Fatalf("read %d of %d bytes: %v", n, desc.Size, err)
			}
			continue
		}
		ra, err := client.ReaderAt(ctx, desc)
		if err != nil {
			b.Fatal(err)
		}
		// Hide the section reader's WriteTo (it has none today), as a
		// tar reader's copy loop does.
		if n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{content.NewReader(ra)}, buf); err != nil || n != desc.Size {
			b.Fatalf("read %d of %d bytes: %v", n, desc.Size, err)
		}
		ra.Close()
	}
}

func readOneCall(ctx context.Context, api contentapi.ContentClient, dgst digest.Digest) (int64, error) {
	rc, err := api.Read(ctx, &contentapi.ReadContentRequest{Digest: dgst.String()})
	if err != nil {
		return 0, err
	}
	var n int64
	for {
		resp, err := rc.Recv()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n += int64(len(resp.Data))
	}
}
