package pin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// TestMeasure counts a layer's entries, its allocated bytes (a sparse
// file's holes and a second hard link not counted) and its apparent size.
func TestMeasure(t *testing.T) {
	requireRoot(t)
	filesystems(t, func(t *testing.T, root string) {
		dir := filepath.Join(root, "upper")
		must(t, os.Mkdir(dir, 0o755))
		makeLayer(t, dir, root)
		s, err := Measure(context.Background(), dir)
		must(t, err)
		// etc, etc/opaque, etc/opaque/sub, etc/opaque/sub/x, ro,
		// etc/status, setuid, etc/deleted, etc/deleted2, fifo,
		// status-link, out-abs, etc/out-rel, etc/in, sparse.
		if s.Files != 15 {
			t.Errorf("files: %d, want 15", s.Files)
		}
		apparent := int64(len("at-dump") + len("x") + len("#!/bin/true") + 64<<20)
		if s.ApparentBytes != apparent {
			t.Errorf("apparent bytes: %d, want %d", s.ApparentBytes, apparent)
		}
		// Allocation is the filesystem's: the two 4 KiB blocks of the
		// sparse file and one block for each small file, give or take
		// a block size.
		if s.Bytes < 2*4096 || s.Bytes > 1<<20 {
			t.Errorf("allocated bytes: %d, want a few blocks", s.Bytes)
		}
	})
}

func TestMeasureNotADir(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	must(t, os.WriteFile(f, nil, 0o644))
	if _, err := Measure(context.Background(), f); !errdefs.IsInvalidArgument(err) {
		t.Errorf("measure of a file: %v, want invalid argument", err)
	}
	if _, err := Measure(context.Background(), filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("measure of nothing: %v, want not exist", err)
	}
}

// TestLimit refuses a layer over either bound with an error that says
// the size and the limit, and that crosses gRPC as a failed precondition.
func TestLimit(t *testing.T) {
	s := Size{Bytes: 10 << 20, ApparentBytes: 20 << 20, Files: 1000}
	for _, tc := range []struct {
		name  string
		limit Limit
		want  []string // in the error; none: accepted
	}{
		{"none", Limit{}, nil},
		{"bytes", Limit{MaxBytes: 1 << 20}, []string{"10MiB", "1000 files", "limit of 1MiB"}},
		{"bytes fit", Limit{MaxBytes: 10 << 20}, nil},
		{"time", Limit{MaxCopyTime: 100 * time.Millisecond, Rate: Rate{BytesPerSecond: 100 << 20, PerFile: 10 * time.Microsecond}},
			[]string{"about 110ms", "limit of 100ms"}},
		{"time fits", Limit{MaxCopyTime: 200 * time.Millisecond, Rate: Rate{BytesPerSecond: 100 << 20, PerFile: 10 * time.Microsecond}}, nil},
	} {
		err := tc.limit.Check("/l/fs", s)
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrTooLarge) || !errdefs.IsFailedPrecondition(err) {
			t.Errorf("%s: %v, want ErrTooLarge", tc.name, err)
			continue
		}
		for _, w := range append(tc.want, "/l/fs") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, err, w)
			}
		}
	}
}
