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
		client := proxy.NewContentStore(conn)
		b.Run("32KiB-writes", func(b *testing.B) { writeBlobs(b, client, 32<<10) })
		b.Run("1MiB-writes", func(b *testing.B) { writeBlobs(b, client, 1<<20) })
		return
	}
	b.Run("32KiB-writes", func(b *testing.B) { benchWrite(b, 32<<10) })
	// What containerd would send with its proxy writer reading larger
	// chunks (docs/storage: the upstream change).
	b.Run("1MiB-writes", func(b *testing.B) { benchWrite(b, 1<<20) })
	// What the protocol does when the writer is handed the whole blob
	// (the proxy client then sends 8 MiB messages): the rate containerd
	// would get if its task service wrote checkpoints that way.
	b.Run("whole-blob", func(b *testing.B) { benchWrite(b, 0) })
}

// benchWrite serves a memstore in process and writes to it in writes of
// chunk bytes, or the whole blob at once if chunk is 0.
func benchWrite(b *testing.B, chunk int) {
	store, err := memstore.New()
	if err != nil {
		b.Fatal(err)
	}
	client, stop := serve(b, b.TempDir(), store)
	defer stop()
	writeBlobs(b, client, chunk)
}

func writeBlobs(b *testing.B, client content.Store, chunk int) {
	blob := bytes.Repeat([]byte("precopy!"), blobMiB()<<17)
	ctx := context.Background()
	b.SetBytes(int64(len(blob)))
	for i := 0; i < b.N; i++ {
		w, err := content.OpenWriter(ctx, client, content.WithRef("bench"))
		if err != nil {
			b.Fatal(err)
		}
		// Unless whole, hide bytes.Reader's WriteTo, as a tar stream has
		// none, and copy through a buffer of chunk bytes, which
		// bytes.Reader fills.
		if chunk == 0 {
			_, err = io.Copy(w, bytes.NewReader(blob))
		} else {
			_, err = io.CopyBuffer(w, struct{ io.Reader }{bytes.NewReader(blob)}, make([]byte, chunk))
		}
		if err != nil {
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
