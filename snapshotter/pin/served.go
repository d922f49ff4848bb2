package pin

import (
	"context"
	"fmt"
	"os"
)

// Served is the view of a snapshotter that serves pinned copies itself:
// copies are kept in Dir, and the snapshotter's Mounts returns the copy
// (Set.Copy) in place of the live layer. Nothing outlives the process
// that serves them but the copies, which the snapshotter removes with Dir.
type Served struct{ Dir string }

func (v Served) Prepare(_ context.Context, upper string) (string, error) {
	if err := os.MkdirAll(v.Dir, 0o700); err != nil {
		return "", fmt.Errorf("pins dir: %w", err)
	}
	dir, err := os.MkdirTemp(v.Dir, "pin-")
	if err != nil {
		return "", fmt.Errorf("copy dir for %s: %w", upper, err)
	}
	return dir, nil
}

// Show does nothing: the snapshotter shows the copy from Mounts.
func (Served) Show(context.Context, string, string) error { return nil }

func (Served) Release(_ context.Context, _, copyDir string) error {
	return os.RemoveAll(copyDir)
}
