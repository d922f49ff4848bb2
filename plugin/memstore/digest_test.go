package memstore

import (
	"context"
	"math/rand"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestDigestAcrossWrites checks that the writer's digest is the digest of
// what was written whenever it is asked for: between writes of odd sizes
// across chunk boundaries, after a truncate and writes over the bytes it
// gave back, and at commit.
func TestDigestAcrossWrites(t *testing.T) {
	ctx := context.Background()
	data := make([]byte, 3*chunkSize+777)
	rand.New(rand.NewSource(7)).Read(data)
	s := newStore(t)
	w := openWriter(t, s, "t", ocispec.Descriptor{})
	written := 0
	writeUpTo := func(end int) {
		for written < end {
			k := min(end-written, 32<<10+13)
			write(t, w, data[written:written+k])
			written += k
		}
	}
	check := func() {
		t.Helper()
		if got, want := w.Digest(), digest.FromBytes(data[:written]); got != want {
			t.Fatalf("after %d bytes: digest %s, want %s", written, got, want)
		}
	}
	writeUpTo(chunkSize + 5)
	check()
	writeUpTo(2*chunkSize + 100)
	// Truncate, then write other bytes over those given back.
	if err := w.Truncate(chunkSize - 3); err != nil {
		t.Fatal(err)
	}
	written = chunkSize - 3
	copy(data[written:], make([]byte, 40_000))
	check()
	writeUpTo(len(data))
	if err := w.Commit(ctx, int64(len(data)), digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, s, digest.FromBytes(data), data)
}

// TestResumeWithAnotherAlgorithm checks that an ingest started under the
// canonical algorithm and resumed for a SHA-512 digest is rehashed whole.
func TestResumeWithAnotherAlgorithm(t *testing.T) {
	ctx := context.Background()
	data := make([]byte, chunkSize+10)
	rand.New(rand.NewSource(8)).Read(data)
	s := newStore(t)
	w := openWriter(t, s, "t", ocispec.Descriptor{})
	write(t, w, data[:chunkSize])
	w.Close()
	want := digest.SHA512.FromBytes(data)
	w = openWriter(t, s, "t", ocispec.Descriptor{Digest: want, Size: int64(len(data))})
	write(t, w, data[chunkSize:])
	if err := w.Commit(ctx, 0, want); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Info(ctx, want); err != nil {
		t.Fatal(err)
	}
}
