package memstore

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Store is an in-memory content.Store. It is safe for concurrent use.
type Store struct {
	limit int64 // bytes; 0 means unlimited

	// mu guards the maps, the counters and every ingest's store-side
	// fields (see ingest). It is never held while calling out (Walk's
	// function) nor while hashing or copying large data.
	mu             sync.Mutex
	blobs          map[digest.Digest]*blob
	ingests        map[string]*ingest
	committedBytes int64
	ingestBytes    int64
	writesRefused  int64
	// lost says why content an earlier precopyd held is gone, so that
	// asking for it says more than "not found".
	lost map[digest.Digest]string

	observers []Observer // fixed at New
}

var _ content.Store = (*Store)(nil)

// blob is committed content. Its data is never written again.
type blob struct {
	data *buffer
	info content.Info // Labels is the store's own copy
}

// Option configures a Store.
type Option func(*Store) error

// WithLimit caps the bytes the store holds, committed blobs and unfinished
// ingests together. 0 means no limit.
func WithLimit(bytes int64) Option {
	return func(s *Store) error {
		if bytes < 0 {
			return fmt.Errorf("content limit %d: %w", bytes, errdefs.ErrInvalidArgument)
		}
		s.limit = bytes
		return nil
	}
}

// WithObserver has o told of every change to committed content.
func WithObserver(o Observer) Option {
	return func(s *Store) error {
		s.observers = append(s.observers, o)
		return nil
	}
}

// New returns an empty store.
func New(opts ...Option) (*Store, error) {
	s := &Store{
		blobs:   map[digest.Digest]*blob{},
		ingests: map[string]*ingest{},
		lost:    map[digest.Digest]string{},
	}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Info returns the metadata of committed content.
func (s *Store) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.blob(dgst)
	if err != nil {
		return content.Info{}, err
	}
	return copyInfo(b.info), nil
}

// blob looks up committed content; the caller holds s.mu.
func (s *Store) blob(dgst digest.Digest) (*blob, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("content %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	b, ok := s.blobs[dgst]
	if !ok {
		if why, ok := s.lost[dgst]; ok {
			return nil, fmt.Errorf("content %v: %s: %w", dgst, why, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("content %v: %w", dgst, errdefs.ErrNotFound)
	}
	return b, nil
}

// ReaderAt returns a reader of committed content; only desc.Digest is used.
func (s *Store) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.blob(desc.Digest)
	if err != nil {
		return nil, err
	}
	return blobReader{b.data}, nil
}

// Delete removes committed content and frees its bytes. Readers already
// open keep working.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.blob(dgst)
	if err != nil {
		return err
	}
	delete(s.blobs, dgst)
	s.committedBytes -= b.info.Size
	for _, o := range s.observers {
		o.Deleted(dgst)
	}
	return nil
}

// Update changes the labels of committed content, the only mutable field.
// Without fieldpaths, or with "labels", the labels are replaced by
// info.Labels; with "labels.<key>", only that key is set from info.Labels,
// and removed if absent or empty there.
func (s *Store) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.blob(info.Digest)
	if err != nil {
		return content.Info{}, err
	}
	labels, err := updatedLabels(b.info.Labels, info, fieldpaths)
	if err != nil {
		return content.Info{}, err
	}
	b.info.Labels = labels
	b.info.UpdatedAt = time.Now()
	for _, o := range s.observers {
		o.Updated(copyInfo(b.info))
	}
	return copyInfo(b.info), nil
}

func updatedLabels(current map[string]string, info content.Info, fieldpaths []string) (map[string]string, error) {
	if len(fieldpaths) == 0 {
		return copyLabels(info.Labels), nil
	}
	labels := maps.Clone(current)
	if labels == nil {
		labels = map[string]string{}
	}
	for _, path := range fieldpaths {
		if key, ok := strings.CutPrefix(path, "labels."); ok {
			labels[key] = info.Labels[key]
			continue
		}
		if path != "labels" {
			return nil, fmt.Errorf("cannot update %q field on content info %q: %w", path, info.Digest, errdefs.ErrInvalidArgument)
		}
		labels = maps.Clone(info.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
	}
	return copyLabels(labels), nil
}

// Walk calls fn for each committed blob matching all of the filters (the
// syntax of containerd's filters package, on fields digest and labels.*),
// in digest order. fn runs without the store locked, so it may call back
// into the store; containerd's garbage collector deletes from within Walk.
func (s *Store) Walk(ctx context.Context, fn content.WalkFunc, fs ...string) error {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return err
	}
	s.mu.Lock()
	infos := make([]content.Info, 0, len(s.blobs))
	for _, b := range s.blobs {
		infos = append(infos, copyInfo(b.info))
	}
	s.mu.Unlock()

	slices.SortFunc(infos, func(a, b content.Info) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	for _, info := range infos {
		if !filter.Match(content.AdaptInfo(info)) {
			continue
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// copyInfo returns info with its own label map, so that neither the
// store nor its callers see the other's later changes.
func copyInfo(info content.Info) content.Info {
	info.Labels = copyLabels(info.Labels)
	return info
}

// copyLabels copies labels without the empty ones: containerd treats an
// empty label value as no label. It returns nil rather than an empty map.
func copyLabels(labels map[string]string) map[string]string {
	var out map[string]string
	for k, v := range labels {
		if v == "" {
			continue
		}
		if out == nil {
			out = make(map[string]string, len(labels))
		}
		out[k] = v
	}
	return out
}
