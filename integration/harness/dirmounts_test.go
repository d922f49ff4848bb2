package harness

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMountOf: a path's mount is found by its mount ID, down to the
// file system type, and a dir below a mount point is on that mount.
func TestMountOf(t *testing.T) {
	proc, err := mountOf("/proc/self")
	if err != nil {
		t.Fatal(err)
	}
	if proc.FSType != "proc" || proc.Mountpoint != "/proc" {
		t.Errorf("/proc/self on %s at %s, want proc at /proc", proc.FSType, proc.Mountpoint)
	}
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	a, err := mountOf(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := mountOf(sub)
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != b.ID {
		t.Errorf("%s on mount %d (%s), its subdir on %d (%s)", dir, a.ID, a.Mountpoint, b.ID, b.Mountpoint)
	}
	if _, err := mountOf(filepath.Join(dir, "missing")); err == nil {
		t.Error("mountOf a missing path: no error")
	}
}
