package memstore

import (
	"bytes"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
)

// chunkSize is the size of every chunk of a buffer but its last.
const chunkSize = 1 << 20

// buffer holds a blob's bytes in fixed-size chunks rather than one slice.
// Checkpoint images run to gigabytes; a single growing slice would be copied
// on every reallocation and briefly need about twice its size, which would
// make the byte limit a lie. Only a small blob's one chunk grows (manifests
// and configs stay small); once a blob outgrows smallBlob every chunk is
// full size, taken ready-made from the buffer's spare (spare.go), so the
// bytes of a large blob are copied once, from the write into memory whose
// pages are already in place. Full chunks are never moved.
type buffer struct {
	chunks [][]byte // all full (chunkSize long) but the last
	size   int64
	spare  spare
}

// smallBlob is the size up to which a blob's first chunk grows by append.
const smallBlob = 64 << 10

func (b *buffer) Len() int64 { return b.size }

// Write appends p. It never fails.
func (b *buffer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		last := len(b.chunks) - 1
		switch {
		case last < 0:
			b.chunks = append(b.chunks, make([]byte, 0, min(len(p), chunkSize)))
			last = 0
		case len(b.chunks[last]) == chunkSize:
			b.chunks = append(b.chunks, b.spare.take())
			last++
		case cap(b.chunks[last]) < chunkSize && cap(b.chunks[last])-len(b.chunks[last]) < len(p) && len(b.chunks[last])+len(p) > smallBlob:
			// The first chunk outgrows a small blob's: full size now.
			b.chunks[last] = append(b.spare.take(), b.chunks[last]...)
		}
		k := min(chunkSize-len(b.chunks[last]), len(p))
		b.chunks[last] = append(b.chunks[last], p[:k]...)
		p = p[k:]
	}
	b.size += int64(n)
	if b.size >= smallBlob/2 {
		// Likely to need a full chunk soon: have one made ready.
		b.spare.prepare()
	}
	return n, nil
}

// ReadAt implements io.ReaderAt.
func (b *buffer) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at offset %d: %w", off, errdefs.ErrInvalidArgument)
	}
	n := 0
	for n < len(p) && off < b.size {
		k := copy(p[n:], b.chunks[off/chunkSize][off%chunkSize:])
		n += k
		off += int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteTo writes the whole buffer to w, e.g. to rehash it.
func (b *buffer) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, c := range b.chunks {
		k, err := w.Write(c)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Truncate shortens the buffer to size, which must be 0 <= size <= Len().
func (b *buffer) Truncate(size int64) {
	keep := int((size + chunkSize - 1) / chunkSize)
	clear(b.chunks[keep:]) // let the dropped chunks be collected
	b.chunks = b.chunks[:keep]
	if keep > 0 {
		b.chunks[keep-1] = b.chunks[keep-1][:size-int64(keep-1)*chunkSize]
	}
	b.size = size
}

// Trim gives back the spare capacity append left in the last chunk, and
// the spare chunk, once the buffer will not grow any more (on commit).
func (b *buffer) Trim() {
	b.spare.drop()
	if len(b.chunks) == 0 {
		return
	}
	last := b.chunks[len(b.chunks)-1]
	if cap(last)-len(last) > 4<<10 {
		b.chunks[len(b.chunks)-1] = bytes.Clone(last)
	}
}

// blobReader is a content.ReaderAt over a committed blob. Committed buffers
// are never written again, so readers need no lock and stay valid even if
// the blob is deleted meanwhile.
// It wraps the buffer, not embeds it, so that it offers no Write.
type blobReader struct{ data *buffer }

func (r blobReader) ReadAt(p []byte, off int64) (int, error) { return r.data.ReadAt(p, off) }
func (r blobReader) Size() int64                             { return r.data.Len() }
func (r blobReader) Close() error                            { return nil }
