package contentservice

import (
	"bytes"
	"context"
	"io"
	"os"
	"strconv"
	"testing"

	"github.com/containerd/containerd/v2/core/content/proxy"

	"github.com/containerd/containerd/v2/core/content"

	"github.com/precopy/precopy/plugin/memstore"
)

// BenchmarkWriteOverGRPC writes a blob the way containerd's task service
// stores a checkpoint (plugins/services/tasks/local.go, writeContent):
// io.Copy from a stream that has no WriteTo, so 32 KiB writes, into a
// writer of the proxy content store, which makes one synchronous gRPC round
// trip per write. That round trip, not memstore, bounds the rate.
//
// With PRECOPY_BENCH_CONTENT_SOCKET it writes to the content service on
// that socket (a precopyd) instead, across processes as containerd does.
func BenchmarkWriteOverGRPC(b *testing.B) {
	if sock := os.Getenv("PRECOPY_BENCH_CONTENT_SOCKET"); sock != "" {
		conn, err := dial(sock)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		writeBlobs(b, proxy.NewContentStore(conn), false)
		return
	}
	b.Run("32KiB-writes", func(b *testing.B) { benchWrite(b, false) })
	// What the protocol does when the writer is handed the whole blob
	// (the proxy client then sends 8 MiB messages): the rate containerd
	// would get if its task service wrote checkpoints that way.
	b.Run("whole-blob", func(b *testing.B) { benchWrite(b, true) })
}

// benchWrite serves a memstore in process. Larger gRPC windows and
// buffers on the server (grpc.InitialWindowSize, ReadBufferSize) were tried
// and did not change the rate: the cost is the round trip per write.
func benchWrite(b *testing.B, whole bool) {
	store, err := memstore.New()
	if err != nil {
		b.Fatal(err)
	}
	client, stop := serve(b, b.TempDir(), store)
	defer stop()
	writeBlobs(b, client, whole)
}

func writeBlobs(b *testing.B, client content.Store, whole bool) {
	blob := bytes.Repeat([]byte("precopy!"), blobMiB()<<17)
	ctx := context.Background()
	b.SetBytes(int64(len(blob)))
	for i := 0; i < b.N; i++ {
		w, err := content.OpenWriter(ctx, client, content.WithRef("bench"))
		if err != nil {
			b.Fatal(err)
		}
		// Unless whole, hide bytes.Reader's WriteTo, as a tar stream has
		// none.
		var src io.Reader = bytes.NewReader(blob)
		if !whole {
			src = struct{ io.Reader }{src}
		}
		if _, err := io.Copy(w, src); err != nil {
			b.Fatal(err)
		}
		if err := w.Commit(ctx, 0, ""); err != nil {
			b.Fatal(err)
		}
		infoDelete(b, ctx, client, w)
	}
}

func infoDelete(b *testing.B, ctx context.Context, cs content.Store, w content.Writer) {
	if err := cs.Delete(ctx, w.Digest()); err != nil {
		b.Fatal(err)
	}
}

// blobMiB is the blob's size: 64 MiB, or PRECOPY_BENCH_BLOB_MIB.
func blobMiB() int {
	if n, err := strconv.Atoi(os.Getenv("PRECOPY_BENCH_BLOB_MIB")); err == nil && n > 0 {
		return n
	}
	return 64
}
