package memstore

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// Metrics is a snapshot of what the store holds.
type Metrics struct {
	// UsedBytes is what counts against the limit:
	// CommittedBytes + IngestBytes.
	UsedBytes      int64 `json:"used_bytes"`
	CommittedBytes int64 `json:"committed_bytes"`
	IngestBytes    int64 `json:"ingest_bytes"`
	// Blobs is the number of committed blobs, Ingests of unfinished ones.
	Blobs   int `json:"blobs"`
	Ingests int `json:"ingests"`
	// LimitBytes is the configured limit; 0 means unlimited.
	LimitBytes int64 `json:"limit_bytes"`
	// WritesRefused counts writes (and writers opened for a known size)
	// refused because they would have exceeded the limit.
	WritesRefused int64 `json:"writes_refused"`
}

// Metrics returns the store's current metrics.
func (s *Store) Metrics() Metrics {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Metrics{
		UsedBytes:      s.committedBytes + s.ingestBytes,
		CommittedBytes: s.committedBytes,
		IngestBytes:    s.ingestBytes,
		Blobs:          len(s.blobs),
		Ingests:        len(s.ingests),
		LimitBytes:     s.limit,
		WritesRefused:  s.writesRefused,
	}
}

// checkRoom returns an error wrapping errdefs.ErrResourceExhausted if n more
// bytes for ingest ref would exceed the limit, and counts the refusal. The
// caller holds s.mu.
func (s *Store) checkRoom(ref string, n int64) error {
	used := s.committedBytes + s.ingestBytes
	if s.limit == 0 || n <= s.limit-used {
		return nil
	}
	s.writesRefused++
	return fmt.Errorf("content store full: %s of %s limit in use by %d blobs and %d ingests, no room for %s more for ingest %q: %w",
		humanBytes(used), humanBytes(s.limit), len(s.blobs), len(s.ingests), humanBytes(n), ref, errdefs.ErrResourceExhausted)
}

// humanBytes formats a byte count for people, in binary units to one
// decimal: "900 B", "1.2 GiB", "512 MiB".
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f, i := float64(n)/1024, 0
	for f >= 1024 && i < len(units)-1 {
		f, i = f/1024, i+1
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", f), ".0") + " " + units[i]
}
