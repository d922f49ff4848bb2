package pin

import (
	"context"
	"time"
)

// Local pins layers of this host's snapshotters for the shim: each pin a
// copy beside the layer, bind-mounted over it (BindMount), recorded in
// RecordDir. Give it the container's bundle dir, and call ReleaseRecorded
// on it when a shim starts for that container again.
type Local struct {
	RecordDir string
	Limit     Limit
	// TTL releases a pin the shim has not unpinned within it; 0: none.
	TTL time.Duration

	set Set
}

// Pin pins the layer whose upper dir is upper: see Set.Pin.
func (l *Local) Pin(ctx context.Context, upper string) (Result, error) {
	return l.set.Pin(ctx, upper, Options{View: BindMount{RecordDir: l.RecordDir}, Limit: l.Limit, TTL: l.TTL})
}

// Unpin releases the pin of upper, if any: see Set.Unpin.
func (l *Local) Unpin(ctx context.Context, upper string) error { return l.set.Unpin(ctx, upper) }

// Close releases every pin.
func (l *Local) Close(ctx context.Context) error { return l.set.Close(ctx) }
