package memstore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// ingest is an unfinished write, keyed by its ref. It outlives its writers:
// closing a writer leaves the ingest for a later writer with the same ref to
// resume, until it is committed or aborted.
type ingest struct {
	ref string

	// Guarded by Store.mu. status.Offset is the bytes the ingest holds
	// (counted in Store.ingestBytes).
	status      content.Status
	lockedSince time.Time // zero while no writer holds the ref
	detached    bool      // no longer in Store.ingests: committed, aborted or restarted

	// Owned by the writer holding the ref; taking the ref under Store.mu
	// hands them from one writer to the next.
	data     *buffer
	digester digest.Digester
}

// Writer opens a writer for the ingest named by the WithRef option, creating
// the ingest or resuming it where an earlier writer left off. A ref has one
// writer at a time; a second gets errdefs.ErrUnavailable (content.OpenWriter
// retries). If the descriptor's digest is already committed, it returns
// errdefs.ErrAlreadyExists. If the descriptor's size is known and the rest
// of it cannot fit under the limit, it fails at once with
// errdefs.ErrResourceExhausted rather than after part of the write.
func (s *Store) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	if wo.Ref == "" {
		return nil, fmt.Errorf("ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	in, err := s.takeIngest(ctx, wo.Ref, wo.Desc.Size, wo.Desc.Digest)
	if err != nil {
		return nil, err
	}

	// Hash with the expected digest's algorithm if there is one, as the
	// local store does; a resumed ingest is rehashed when that changes.
	alg := digest.Canonical
	if wo.Desc.Digest != "" && wo.Desc.Digest.Algorithm().Available() {
		alg = wo.Desc.Digest.Algorithm()
	}
	if in.digester == nil || in.digester.Digest().Algorithm() != alg {
		in.digester = alg.Digester()
		in.data.WriteTo(in.digester.Hash())
	}
	return &writer{s: s, in: in}, nil
}

// takeIngest finds or creates the ingest for ref and locks it to the
// caller.
func (s *Store) takeIngest(ctx context.Context, ref string, total int64, expected digest.Digest) (*ingest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if expected != "" {
		if _, ok := s.blobs[expected]; ok {
			return nil, fmt.Errorf("content %v: %w", expected, errdefs.ErrAlreadyExists)
		}
	}
	in, ok := s.ingests[ref]
	if ok && !in.lockedSince.IsZero() {
		// The duration tells a stuck writer (long) from contention (short).
		return nil, fmt.Errorf("ref %s locked for %s (since %s): %w",
			ref, time.Since(in.lockedSince), in.lockedSince, errdefs.ErrUnavailable)
	}
	if ok && total > 0 && in.status.Total > 0 && total != in.status.Total {
		// The ref is reused for content of another size: start afresh,
		// as the local store does.
		log.G(ctx).WithField("ref", ref).Infof("restarting ingest: total %d differs from %d", total, in.status.Total)
		s.dropIngest(in)
		ok = false
	}
	var held int64
	if ok {
		held = in.status.Offset
	}
	if total > held {
		if err := s.checkRoom(ref, total-held); err != nil {
			return nil, err
		}
	}

	now := time.Now()
	if !ok {
		in = &ingest{
			ref:    ref,
			status: content.Status{Ref: ref, StartedAt: now, UpdatedAt: now},
			data:   &buffer{},
		}
		s.ingests[ref] = in
	}
	if total > 0 {
		in.status.Total = total
	}
	if expected != "" {
		in.status.Expected = expected
	}
	in.lockedSince = now
	return in, nil
}

// dropIngest forgets an ingest and frees its bytes. The caller holds s.mu.
func (s *Store) dropIngest(in *ingest) {
	delete(s.ingests, in.ref)
	in.detached = true
	s.ingestBytes -= in.status.Offset
}

// Status returns the progress of the ingest named ref.
func (s *Store) Status(ctx context.Context, ref string) (content.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.ingests[ref]
	if !ok {
		return content.Status{}, fmt.Errorf("ingest ref %q: %w", ref, errdefs.ErrNotFound)
	}
	return in.status, nil
}

// ListStatuses returns the progress of the ingests matching all of the
// filters (containerd's filter syntax on the field ref, e.g. `ref~="^layer-"`),
// in ref order.
func (s *Store) ListStatuses(ctx context.Context, fs ...string) ([]content.Status, error) {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	var statuses []content.Status
	for _, in := range s.ingests {
		if filter.Match(adaptStatus(in.status)) {
			statuses = append(statuses, in.status)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(statuses, func(a, b content.Status) int { return strings.Compare(a.Ref, b.Ref) })
	return statuses, nil
}

// adaptStatus exposes a status's ref to filters, the one field the local
// store filters ingests on.
func adaptStatus(st content.Status) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) == 1 && fieldpath[0] == "ref" {
			return st.Ref, true
		}
		return "", false
	})
}

// Abort discards the ingest named ref and frees its bytes, even while a
// writer holds it: that writer's later writes and commit then fail with
// errdefs.ErrNotFound, and the ref is free for a new ingest at once.
func (s *Store) Abort(ctx context.Context, ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.ingests[ref]
	if !ok {
		return fmt.Errorf("ingest ref %q: %w", ref, errdefs.ErrNotFound)
	}
	s.dropIngest(in)
	log.G(ctx).WithField("ref", ref).Debug("aborted ingest")
	return nil
}
