package memstore

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// writer writes to one ingest while holding its ref. Like the local store's
// writer it is not safe for concurrent use.
type writer struct {
	s      *Store
	in     *ingest
	closed bool
}

var _ content.Writer = (*writer)(nil)

// Write appends p to the ingest, whole or not at all: if p would take the
// store over its limit, nothing is written and the error wraps
// errdefs.ErrResourceExhausted. The ingest stays as it was, to be resumed
// once there is room, or aborted.
func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, fmt.Errorf("write to closed writer for ref %q: %w", w.in.ref, errdefs.ErrFailedPrecondition)
	}
	if err := w.s.reserve(w.in, int64(len(p))); err != nil {
		return 0, err
	}
	// Copy and hash outside the store's lock: the ref is ours.
	w.in.data.Write(p)
	w.in.digester.Hash().Write(p)
	return len(p), nil
}

// reserve counts n more bytes for ingest in, if they fit.
func (s *Store) reserve(in *ingest, n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.detached {
		return fmt.Errorf("ingest ref %q was aborted: %w", in.ref, errdefs.ErrNotFound)
	}
	if err := s.checkRoom(in.ref, n); err != nil {
		return err
	}
	in.status.Offset += n
	in.status.UpdatedAt = time.Now()
	s.ingestBytes += n
	return nil
}

// Digest is the digest of what was written so far.
func (w *writer) Digest() digest.Digest { return w.in.digester.Digest() }

func (w *writer) Status() (content.Status, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.in.status, nil
}

// Truncate cuts the ingest back to size bytes (at most its current length)
// and frees the rest.
func (w *writer) Truncate(size int64) error {
	if w.closed {
		return fmt.Errorf("truncate closed writer for ref %q: %w", w.in.ref, errdefs.ErrFailedPrecondition)
	}
	w.s.mu.Lock()
	if w.in.detached {
		w.s.mu.Unlock()
		return fmt.Errorf("ingest ref %q was aborted: %w", w.in.ref, errdefs.ErrNotFound)
	}
	if size < 0 || size > w.in.status.Offset {
		w.s.mu.Unlock()
		return fmt.Errorf("truncate ingest %q of %d bytes to %d: %w", w.in.ref, w.in.status.Offset, size, errdefs.ErrInvalidArgument)
	}
	w.s.ingestBytes -= w.in.status.Offset - size
	w.in.status.Offset = size
	w.in.status.UpdatedAt = time.Now()
	w.s.mu.Unlock()

	w.in.data.Truncate(size)
	alg := w.in.digester.Digest().Algorithm()
	w.in.digester = alg.Digester()
	w.in.data.WriteTo(w.in.digester.Hash())
	return nil
}

// Close releases the ref and leaves the ingest to be resumed or aborted.
// Closing twice is harmless.
func (w *writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	if !w.in.detached {
		w.in.lockedSince = time.Time{}
	}
	return nil
}

// Commit turns the ingest into committed content after checking size and
// expected (either may be zero if unknown); a mismatch is
// errdefs.ErrFailedPrecondition and keeps the ingest for another try. If
// the content exists already, the ingest is dropped and the error is
// errdefs.ErrAlreadyExists. Commit always closes the writer.
func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	if w.closed {
		return fmt.Errorf("cannot commit on closed writer: %w", errdefs.ErrFailedPrecondition)
	}
	defer w.Close()

	var base content.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return err
		}
	}
	in := w.in
	if n := in.data.Len(); size > 0 && size != n {
		return fmt.Errorf("unexpected commit size %d, expected %d: %w", n, size, errdefs.ErrFailedPrecondition)
	}
	if expected != "" && expected.Algorithm().Available() && expected.Algorithm() != in.digester.Digest().Algorithm() {
		// Opened without the digest, hashed with the canonical algorithm.
		in.digester = expected.Algorithm().Digester()
		in.data.WriteTo(in.digester.Hash())
	}
	dgst := in.digester.Digest()
	if expected != "" && expected != dgst {
		return fmt.Errorf("unexpected commit digest %s, expected %s: %w", dgst, expected, errdefs.ErrFailedPrecondition)
	}
	in.data.Trim()
	return w.s.commit(ctx, in, dgst, base.Labels)
}

// commit moves the ingest's bytes to a new blob.
func (s *Store) commit(ctx context.Context, in *ingest, dgst digest.Digest, labels map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.detached {
		return fmt.Errorf("ingest ref %q was aborted: %w", in.ref, errdefs.ErrNotFound)
	}
	if _, ok := s.blobs[dgst]; ok {
		s.dropIngest(in)
		return fmt.Errorf("content %v: %w", dgst, errdefs.ErrAlreadyExists)
	}
	s.dropIngest(in)
	n := in.data.Len()
	s.committedBytes += n
	now := time.Now()
	b := &blob{
		data: in.data,
		info: content.Info{Digest: dgst, Size: n, CreatedAt: now, UpdatedAt: now, Labels: copyLabels(labels)},
	}
	s.blobs[dgst] = b
	delete(s.lost, dgst)
	for _, o := range s.observers {
		o.Committed(copyInfo(b.info), blobReader{b.data})
	}
	log.G(ctx).WithFields(log.Fields{"digest": dgst, "size": n, "ref": in.ref}).Debug("committed content")
	return nil
}
