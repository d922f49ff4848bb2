package memstore

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func newStore(t *testing.T, opts ...Option) *Store {
	t.Helper()
	s, err := New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// commitBlob writes and commits data in one go.
func commitBlob(t *testing.T, s *Store, ref string, data []byte) digest.Digest {
	t.Helper()
	desc := ocispec.Descriptor{Size: int64(len(data)), Digest: digest.FromBytes(data)}
	if err := content.WriteBlob(context.Background(), s, ref, bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}
	return desc.Digest
}

func openWriter(t *testing.T, s *Store, ref string, desc ocispec.Descriptor) content.Writer {
	t.Helper()
	w, err := s.Writer(context.Background(), content.WithRef(ref), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func write(t *testing.T, w content.Writer, data []byte) {
	t.Helper()
	if n, err := w.Write(data); err != nil || n != len(data) {
		t.Fatalf("write %d bytes: wrote %d, %v", len(data), n, err)
	}
}

func checkUsed(t *testing.T, s *Store, want int64) {
	t.Helper()
	if got := s.Metrics().UsedBytes; got != want {
		t.Fatalf("used bytes %d, want %d", got, want)
	}
}

func checkBlob(t *testing.T, s *Store, dgst digest.Digest, want []byte) {
	t.Helper()
	got, err := content.ReadBlob(context.Background(), s, ocispec.Descriptor{Digest: dgst})
	if err != nil {
		t.Fatalf("read %s: %v", dgst, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("blob %s changed", dgst)
	}
}

func TestWriteOverLimitFails(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, WithLimit(1000))
	kept := bytes.Repeat([]byte("k"), 600)
	keptDigest := commitBlob(t, s, "kept", kept)

	w := openWriter(t, s, "big", ocispec.Descriptor{}) // size unknown: no early refusal
	defer w.Close()
	write(t, w, make([]byte, 300))
	n, err := w.Write(make([]byte, 200))
	if !errdefs.IsResourceExhausted(err) {
		t.Fatalf("write past the limit: got %v, want resource exhausted", err)
	}
	if n != 0 {
		t.Errorf("refused write reported %d bytes written", n)
	}
	for _, part := range []string{"content store full: 900 B of 1000 B limit in use", "no room for 200 B more", `"big"`} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q does not say %q", err, part)
		}
	}

	checkBlob(t, s, keptDigest, kept)
	st, err := s.Status(ctx, "big")
	if err != nil || st.Offset != 300 {
		t.Fatalf("ingest after refused write: offset %d, %v; want 300", st.Offset, err)
	}
	checkUsed(t, s, 900)

	// What still fits is still accepted.
	write(t, w, make([]byte, 100))
	checkUsed(t, s, 1000)
	if got := s.Metrics().WritesRefused; got != 1 {
		t.Errorf("writes refused %d, want 1", got)
	}
}

func TestWriterForKnownSizeOverLimitFailsAtOnce(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, WithLimit(1000))
	commitBlob(t, s, "kept", make([]byte, 600))

	_, err := s.Writer(ctx, content.WithRef("big"), content.WithDescriptor(ocispec.Descriptor{Size: 500}))
	if !errdefs.IsResourceExhausted(err) {
		t.Fatalf("writer for 500 bytes with 400 free: got %v, want resource exhausted", err)
	}
	if _, err := s.Status(ctx, "big"); !errdefs.IsNotFound(err) {
		t.Errorf("refused writer left an ingest behind: %v", err)
	}
	w := openWriter(t, s, "fits", ocispec.Descriptor{Size: 400})
	w.Close()
}

func TestAbortFreesRefusedIngest(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, WithLimit(1000))
	w := openWriter(t, s, "big", ocispec.Descriptor{})
	write(t, w, make([]byte, 1000))
	if _, err := w.Write([]byte{0}); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("write into a full store: got %v, want resource exhausted", err)
	}

	// Abort works while the writer is still open, as after a failed
	// Write; the writer is then dead.
	if err := s.Abort(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	checkUsed(t, s, 0)
	if _, err := w.Write([]byte{0}); !errdefs.IsNotFound(err) {
		t.Errorf("write after abort: got %v, want not found", err)
	}
	if err := w.Commit(ctx, 0, ""); !errdefs.IsNotFound(err) {
		t.Errorf("commit after abort: got %v, want not found", err)
	}
	checkUsed(t, s, 0)

	// The freed room is usable, under the same ref too.
	data := bytes.Repeat([]byte("n"), 1000)
	checkBlob(t, s, commitBlob(t, s, "big", data), data)
}

func TestResumedIngestCountedOnce(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, WithLimit(1000))
	data := bytes.Repeat([]byte("r"), 800)
	desc := ocispec.Descriptor{Size: int64(len(data)), Digest: digest.FromBytes(data)}

	w := openWriter(t, s, "resumed", desc)
	write(t, w, data[:500])
	w.Close()
	checkUsed(t, s, 500)

	// Reopening for the same 800 bytes needs only the missing 300.
	w = openWriter(t, s, "resumed", desc)
	checkUsed(t, s, 500)
	write(t, w, data[500:])
	checkUsed(t, s, 800)
	if err := w.Commit(ctx, desc.Size, desc.Digest); err != nil {
		t.Fatal(err)
	}
	checkUsed(t, s, 800)
	m := s.Metrics()
	if m.CommittedBytes != 800 || m.IngestBytes != 0 || m.Blobs != 1 || m.Ingests != 0 {
		t.Errorf("after commit: %+v", m)
	}
	checkBlob(t, s, desc.Digest, data)
}

func TestFreedBytes(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, WithLimit(1000))

	w := openWriter(t, s, "t", ocispec.Descriptor{})
	write(t, w, make([]byte, 700))
	if err := w.Truncate(200); err != nil {
		t.Fatal(err)
	}
	checkUsed(t, s, 200)
	w.Close()

	// Committing content that exists drops the ingest and its bytes.
	dgst := commitBlob(t, s, "first", []byte("same"))
	w = openWriter(t, s, "second", ocispec.Descriptor{})
	write(t, w, []byte("same"))
	if err := w.Commit(ctx, 0, ""); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("commit of existing content: got %v, want already exists", err)
	}
	checkUsed(t, s, 204)

	if err := s.Delete(ctx, dgst); err != nil {
		t.Fatal(err)
	}
	checkUsed(t, s, 200)
	if err := s.Abort(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	checkUsed(t, s, 0)
}

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, WithLimit(1<<20))
	commitBlob(t, s, "a", make([]byte, 100))
	commitBlob(t, s, "b", make([]byte, 50))
	w := openWriter(t, s, "c", ocispec.Descriptor{})
	write(t, w, make([]byte, 30))
	w.Close()
	if _, err := s.Writer(ctx, content.WithRef("d"), content.WithDescriptor(ocispec.Descriptor{Size: 2 << 20})); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("writer for 2MiB under a 1MiB limit: %v", err)
	}

	want := Metrics{UsedBytes: 180, CommittedBytes: 150, IngestBytes: 30, Blobs: 2, Ingests: 1, LimitBytes: 1 << 20, WritesRefused: 1}
	if got := s.Metrics(); got != want {
		t.Errorf("metrics\n got %+v\nwant %+v", got, want)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB",
		512 << 20: "512 MiB", 1288490189: "1.2 GiB", 5 << 40: "5 TiB",
	} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestUnlimited(t *testing.T) {
	s := newStore(t)
	commitBlob(t, s, "a", make([]byte, 3*chunkSize+5))
	if m := s.Metrics(); m.LimitBytes != 0 || m.UsedBytes != 3*chunkSize+5 {
		t.Errorf("metrics %+v", m)
	}
	if _, err := New(WithLimit(-1)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative limit: got %v, want invalid argument", err)
	}
}
