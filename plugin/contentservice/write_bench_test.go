package contentservice

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"google.golang.org/grpc"

	"github.com/precopy/precopy/plugin/memstore"
)

// BenchmarkWriteOverGRPC writes a blob the way containerd's task service
// stores a checkpoint: io.Copy (32 KiB writes) into a writer of the proxy
// content store, i.e. one gRPC round trip per write.
func BenchmarkWriteOverGRPC(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchWrite(b) })
	b.Run("windows", func(b *testing.B) {
		benchWrite(b, grpc.InitialWindowSize(8<<20), grpc.InitialConnWindowSize(16<<20))
	})
	b.Run("windows+buffers", func(b *testing.B) {
		benchWrite(b, grpc.InitialWindowSize(8<<20), grpc.InitialConnWindowSize(16<<20),
			grpc.ReadBufferSize(256<<10), grpc.WriteBufferSize(64<<10))
	})
}

func benchWrite(b *testing.B, opts ...grpc.ServerOption) {
	store, err := memstore.New()
	if err != nil {
		b.Fatal(err)
	}
	client, stop := serve(b, b.TempDir(), store, opts...)
	defer stop()
	blob := bytes.Repeat([]byte("precopy!"), 8<<20) // 64 MiB
	ctx := context.Background()
	b.SetBytes(int64(len(blob)))
	for i := 0; i < b.N; i++ {
		w, err := content.OpenWriter(ctx, client, content.WithRef("bench"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(w, bytes.NewReader(blob)); err != nil {
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
