package workload

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// Status is the content of memload's status file, and what `memload query`
// and `memload reset-gap` print on stdout.
type Status struct {
	// PID is memload's pid in its own pid namespace (1 in a container).
	PID int `json:"pid"`
	// Counter is the number of loop iterations.
	Counter uint64 `json:"counter"`
	// Cursor is the number of page rewrites so far; with Seed it determines
	// the expected content of the whole memory.
	Cursor uint64 `json:"cursor"`

	// MaxGapMS is the longest time between the starts of two consecutive
	// iterations since start or the last reset, by the monotonic clock,
	// excluding time spent answering queries. A freeze, dump and restore
	// shows up here as one long gap.
	MaxGapMS float64 `json:"max_gap_ms"`
	// LastGapMS is the gap before the latest iteration.
	LastGapMS float64 `json:"last_gap_ms"`
	// MaxWallGapMS is MaxGapMS measured with the wall clock instead. The
	// monotonic clock is per boot, so after a restore on another machine
	// only this one means anything (given synchronised clocks).
	MaxWallGapMS float64 `json:"max_wall_gap_ms"`

	// The parameters memload was started with.
	MiB        int     `json:"mib"`
	DirtyMiBps float64 `json:"dirty_mibps"`
	Hot        float64 `json:"hot"`
	Seed       uint64  `json:"seed"`
	Pages      uint64  `json:"pages"`
	HotPages   uint64  `json:"hot_pages"`

	// QuerySeq counts answered queries (SIGUSR1). The fields below up to
	// QueryMS are the answer to the latest one.
	QuerySeq uint64 `json:"query_seq"`
	// QueryCursor is the cursor the latest query verified against; Checksum
	// of two queries is comparable only if their QueryCursor is equal.
	QueryCursor uint64 `json:"query_cursor"`
	// Verified is true if the latest query found every page intact.
	Verified bool `json:"verified"`
	// BadPages is the number of pages the latest query found wrong.
	BadPages uint64 `json:"bad_pages"`
	// FirstBadPage is the lowest wrong page index, or -1.
	FirstBadPage int64 `json:"first_bad_page"`
	// Checksum is the CRC-32C of the whole memory, 8 hex digits.
	Checksum string `json:"checksum"`
	// QueryMS is how long verifying and checksumming took.
	QueryMS float64 `json:"query_ms"`

	// ResetSeq counts gap resets (SIGUSR2).
	ResetSeq uint64 `json:"reset_seq"`
	// StatusSeq counts status file writes.
	StatusSeq uint64 `json:"status_seq"`
	// FileMismatches counts writes that found the status file on disk
	// other than the last one this process (its memory) wrote: after a
	// restore, a file system that does not match the memory image, such
	// as a rw-layer diff that caught writes made after the dump.
	// FirstFileMismatch says what the first one found.
	FileMismatches    uint64 `json:"file_mismatches"`
	FirstFileMismatch string `json:"first_file_mismatch,omitempty"`
	// StartedAt is when this process image first started. It is kept in
	// memory, so a restored process reports its original start.
	StartedAt time.Time `json:"started_at"`
	// WrittenAt is when this status was written.
	WrittenAt time.Time `json:"written_at"`
}

// Check returns an error unless the latest query found the memory intact.
func (s Status) Check() error {
	switch {
	case s.QuerySeq == 0:
		return errors.New("memload has not answered any query")
	case !s.Verified || s.BadPages != 0:
		return fmt.Errorf("memload found %d bad pages of %d (first %d) at cursor %d",
			s.BadPages, s.Pages, s.FirstBadPage, s.QueryCursor)
	}
	return nil
}

// MaxGap is MaxGapMS as a Duration.
func (s Status) MaxGap() time.Duration {
	return time.Duration(s.MaxGapMS * float64(time.Millisecond))
}

// ParseStatus decodes a status, e.g. the stdout of `memload query`.
func ParseStatus(b []byte) (Status, error) {
	var s Status
	if err := json.Unmarshal(b, &s); err != nil {
		return Status{}, fmt.Errorf("parse memload status: %w", err)
	}
	return s, nil
}

// readAttempts and readRetryDelay bound how long ReadStatus rides out a
// missing or partial file. WriteStatus renames, so readers of a local file
// never see a partial one, but a status file read through another layer (a
// copy, a bind mount being set up, a file not yet written) may be.
const (
	readAttempts   = 5
	readRetryDelay = 10 * time.Millisecond
)

// ReadStatus reads a status file, retrying a few times if it is absent or
// does not parse.
func ReadStatus(path string) (Status, error) {
	var err error
	for attempt := 0; attempt < readAttempts; attempt++ {
		if attempt > 0 {
			time.Sleep(readRetryDelay)
		}
		var s Status
		s, err = readStatusOnce(path)
		if err == nil || !isTransient(err) {
			return s, err
		}
	}
	return Status{}, err
}

func readStatusOnce(path string) (Status, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Status{}, fmt.Errorf("read memload status: %w", err)
	}
	return ParseStatus(b)
}

// isTransient reports whether a read error is one a writer in the middle of
// (re)creating the file would cause.
func isTransient(err error) bool {
	var syntax *json.SyntaxError
	return errors.Is(err, fs.ErrNotExist) || errors.As(err, &syntax) || errors.Is(err, io.ErrUnexpectedEOF)
}

// WriteStatus replaces the status file atomically: it writes path+".tmp"
// and renames it over path, so a reader sees the old or the new status,
// never a mix.
func WriteStatus(path string, s Status) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode memload status: %w", err)
	}
	b = append(b, '\n')
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write memload status: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace memload status: %w", err)
	}
	return nil
}
