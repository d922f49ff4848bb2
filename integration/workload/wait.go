package workload

import (
	"context"
	"fmt"
	"time"
)

// PollInterval is how often the Wait functions re-read the status file.
const PollInterval = 10 * time.Millisecond

// WaitStatus polls the status file until done accepts it, and returns that
// status. A missing or unparsable file is waited out; on ctx's end the error
// says what was last seen.
func WaitStatus(ctx context.Context, path string, done func(Status) bool) (Status, error) {
	ticker := time.NewTicker(PollInterval)
	defer ticker.Stop()
	var (
		last    Status
		lastErr error
	)
	for {
		s, err := readStatusOnce(path)
		switch {
		case err == nil && done(s):
			return s, nil
		case err == nil:
			last, lastErr = s, nil
		case isTransient(err):
			lastErr = err
		default:
			return Status{}, err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return Status{}, fmt.Errorf("wait for memload status %s: %w (last error: %v)", path, ctx.Err(), lastErr)
			}
			return last, fmt.Errorf("wait for memload status %s: %w (last seen: status_seq %d, query_seq %d, reset_seq %d)",
				path, ctx.Err(), last.StatusSeq, last.QuerySeq, last.ResetSeq)
		case <-ticker.C:
		}
	}
}

// WaitReadable waits until the status file exists and parses: memload
// writes it once its memory is filled, so this also waits for memload to be
// ready to answer queries.
func WaitReadable(ctx context.Context, path string) (Status, error) {
	return WaitStatus(ctx, path, func(Status) bool { return true })
}

// WaitQuery waits for the answer to a query sent after query_seq was
// prevSeq.
func WaitQuery(ctx context.Context, path string, prevSeq uint64) (Status, error) {
	return WaitStatus(ctx, path, func(s Status) bool { return s.QuerySeq > prevSeq })
}

// WaitReset waits for the answer to a gap reset sent after reset_seq was
// prevSeq.
func WaitReset(ctx context.Context, path string, prevSeq uint64) (Status, error) {
	return WaitStatus(ctx, path, func(s Status) bool { return s.ResetSeq > prevSeq })
}
