package memstore

import (
	"bytes"
	"io"
	"math/rand"
	"testing"
)

// TestBufferAcrossChunks checks reads, truncation and rehashing where
// writes and reads straddle chunk boundaries.
func TestBufferAcrossChunks(t *testing.T) {
	data := make([]byte, 2*chunkSize+1234)
	rand.New(rand.NewSource(1)).Read(data)

	var b buffer
	for rest := data; len(rest) > 0; {
		k := min(len(rest), 300_001) // not a divisor of chunkSize
		b.Write(rest[:k])
		rest = rest[k:]
	}
	if b.Len() != int64(len(data)) {
		t.Fatalf("length %d, want %d", b.Len(), len(data))
	}
	for i, c := range b.chunks[:len(b.chunks)-1] {
		if len(c) != chunkSize {
			t.Fatalf("chunk %d holds %d bytes, want %d", i, len(c), chunkSize)
		}
	}

	for _, off := range []int64{0, 1, chunkSize - 1, chunkSize, 2*chunkSize - 10, int64(len(data)) - 1} {
		p := make([]byte, 4096)
		n, err := b.ReadAt(p, off)
		want := data[off:min(off+4096, int64(len(data)))]
		if !bytes.Equal(p[:n], want) {
			t.Errorf("ReadAt(%d): wrong bytes", off)
		}
		if n < len(p) && err != io.EOF {
			t.Errorf("ReadAt(%d): short read of %d without EOF: %v", off, n, err)
		}
	}

	var all bytes.Buffer
	b.WriteTo(&all)
	if !bytes.Equal(all.Bytes(), data) {
		t.Fatal("WriteTo: wrong bytes")
	}

	b.Truncate(chunkSize + 7)
	b.Write([]byte("tail"))
	want := append(append([]byte{}, data[:chunkSize+7]...), "tail"...)
	got, err := io.ReadAll(io.NewSectionReader(&b, 0, b.Len()))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after truncate and write: %d bytes, %v", len(got), err)
	}

	b.Truncate(0)
	if b.Len() != 0 || len(b.chunks) != 0 {
		t.Fatalf("truncate to 0 left %d bytes in %d chunks", b.Len(), len(b.chunks))
	}
}

// TestBufferChunkSizes checks that a small blob's chunk stays small and
// that a large blob, written as containerd's proxy writes (a tar header,
// then 32 KiB at a time), is held in full-size chunks.
func TestBufferChunkSizes(t *testing.T) {
	var small buffer
	small.Write(make([]byte, 900))
	small.Write(make([]byte, 1000))
	small.Trim()
	if c := small.chunks[0]; cap(c) > 4<<10 {
		t.Errorf("a 1900-byte blob holds a chunk of %d bytes", cap(c))
	}
	var large buffer
	large.Write(make([]byte, 512))
	for large.Len() < 3*chunkSize+100 {
		large.Write(make([]byte, 32<<10))
	}
	for i, c := range large.chunks {
		if cap(c) != chunkSize {
			t.Errorf("chunk %d of %d has capacity %d, want %d", i, len(large.chunks), cap(c), chunkSize)
		}
	}
}
