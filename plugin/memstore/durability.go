package memstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Observer hears of every change to committed content, so that something
// outside the store can keep a copy of it (plugin/persist) or a record of
// what is held (plugin/inventory).
//
// The store calls an observer with its lock held, in the order the changes
// happen, so an observer never sees a blob's delete before its commit. It
// must therefore return quickly (queue slow work for later) and must not
// call back into the store.
type Observer interface {
	// Committed is called for new content; data stays readable after
	// the call, even once the content is deleted, and never changes.
	Committed(info content.Info, data content.ReaderAt)
	// Deleted is called when content is deleted.
	Deleted(dgst digest.Digest)
	// Updated is called when content's labels change.
	Updated(info content.Info)
}

// Load adds content recovered from elsewhere (a persistence directory) as
// committed content, and tells the observers as a commit does: it reads info.Size
// bytes from r and keeps them only if r ends there and they hash to
// info.Digest. So a torn or corrupted copy is refused (errdefs.ErrDataLoss
// wrapped), never stored. The bytes count against the limit like any
// others (errdefs.ErrResourceExhausted if they do not fit). Labels and
// times are taken from info.
func (s *Store) Load(ctx context.Context, info content.Info, r io.Reader) error {
	if err := info.Digest.Validate(); err != nil {
		return fmt.Errorf("load content %q: %v: %w", info.Digest, err, errdefs.ErrInvalidArgument)
	}
	if info.Size < 0 {
		return fmt.Errorf("load content %v of size %d: %w", info.Digest, info.Size, errdefs.ErrInvalidArgument)
	}
	// Reserve the room first, so that concurrent writers cannot take it
	// while the copy is read.
	s.mu.Lock()
	if _, ok := s.blobs[info.Digest]; ok {
		s.mu.Unlock()
		return fmt.Errorf("content %v: %w", info.Digest, errdefs.ErrAlreadyExists)
	}
	if err := s.checkRoom("load "+info.Digest.String(), info.Size); err != nil {
		s.mu.Unlock()
		return err
	}
	s.ingestBytes += info.Size
	s.mu.Unlock()

	data, err := readVerified(info, r)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.ingestBytes -= info.Size
	if err != nil {
		return err
	}
	if _, ok := s.blobs[info.Digest]; ok {
		return fmt.Errorf("content %v: %w", info.Digest, errdefs.ErrAlreadyExists)
	}
	now := time.Now()
	if info.CreatedAt.IsZero() {
		info.CreatedAt = now
	}
	if info.UpdatedAt.IsZero() {
		info.UpdatedAt = info.CreatedAt
	}
	info.Labels = copyLabels(info.Labels)
	s.blobs[info.Digest] = &blob{data: data, info: info}
	s.committedBytes += info.Size
	delete(s.lost, info.Digest)
	for _, o := range s.observers {
		o.Committed(copyInfo(info), blobReader{data})
	}
	return nil
}

// readVerified reads exactly info.Size bytes from r and checks that r ends
// there and that they hash to info.Digest.
func readVerified(info content.Info, r io.Reader) (*buffer, error) {
	if !info.Digest.Algorithm().Available() {
		return nil, fmt.Errorf("load content %v: digest algorithm unavailable: %w", info.Digest, errdefs.ErrInvalidArgument)
	}
	data := &buffer{}
	digester := info.Digest.Algorithm().Digester()
	n, err := io.CopyN(io.MultiWriter(data, digester.Hash()), r, info.Size)
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("load content %v: %d bytes of %d: %w", info.Digest, n, info.Size, errdefs.ErrDataLoss)
	}
	if err != nil {
		return nil, fmt.Errorf("load content %v: %w", info.Digest, err)
	}
	if k, _ := r.Read(make([]byte, 1)); k > 0 {
		return nil, fmt.Errorf("load content %v: longer than %d bytes: %w", info.Digest, info.Size, errdefs.ErrDataLoss)
	}
	if got := digester.Digest(); got != info.Digest {
		return nil, fmt.Errorf("load content %v: bytes hash to %v: %w", info.Digest, got, errdefs.ErrDataLoss)
	}
	data.Trim()
	return data, nil
}

// MarkLost records why content is gone (for one, held by an earlier
// precopyd that kept it in memory only), so that asking for it fails with
// errdefs.ErrNotFound saying so. Committing the content again clears the
// mark.
func (s *Store) MarkLost(dgsts []digest.Digest, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range dgsts {
		if _, ok := s.blobs[d]; !ok {
			s.lost[d] = why
		}
	}
}
