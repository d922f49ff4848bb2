package pin

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/continuity/fs"
)

// BenchmarkCopy measures what copying a writable layer costs, on a disk
// (a dir under /var/lib, where containerd keeps its snapshots, or
// $PRECOPY_PIN_BENCH_DIR) and on a tmpfs (precopyd's snapshotter), for
// two layers: one large file (the data rate) and many small files (the
// cost per entry). rate.go's figures come from it; it also measures
// continuity's fs.CopyDir on the same layers (see Copy for why it is not
// used). Run it under the machine's heavy-run lock:
//
//	flock /tmp/precopy-heavy.lock go test -run '^$' -bench BenchmarkCopy -count 6 ./snapshotter/pin/
//
// MB/s is the data rate, us/file the time per entry.
func BenchmarkCopy(b *testing.B) {
	requireRoot(b)
	disk := os.Getenv("PRECOPY_PIN_BENCH_DIR")
	if disk == "" {
		disk = "/var/lib"
	}
	for _, where := range []struct{ name, dir string }{
		{"disk", disk},
		{"tmpfs", ""},
	} {
		for _, layer := range []struct {
			name         string
			files, bytes int
		}{
			{"one-256MiB-file", 1, 256 << 20},
			{"4096-files-of-4KiB", 4096, 4 << 10},
		} {
			for _, impl := range []struct {
				name string
				copy func(src, dst string) error
			}{
				{"pin.Copy", func(src, dst string) error { return Copy(context.Background(), src, dst) }},
				{"continuity", func(src, dst string) error { return fs.CopyDir(dst, src) }},
			} {
				b.Run(where.name+"/"+layer.name+"/"+impl.name, func(b *testing.B) {
					root := where.dir
					if root == "" {
						root = onTmpfs(b)
					}
					dir, err := os.MkdirTemp(root, "precopy-pin-bench-")
					must(b, err)
					defer os.RemoveAll(dir)
					src := filepath.Join(dir, "src")
					makeFiles(b, src, layer.files, layer.bytes)
					size, err := Measure(context.Background(), src)
					must(b, err)
					b.SetBytes(size.Bytes)
					b.ResetTimer()
					for i := range b.N {
						dst := filepath.Join(dir, fmt.Sprint(i))
						must(b, impl.copy(src, dst))
						b.StopTimer()
						must(b, os.RemoveAll(dst))
						b.StartTimer()
					}
					b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*size.Files), "us/file")
				})
			}
		}
	}
}

// makeFiles makes n files of size random bytes in dir, spread over dirs
// of 64 files as a layer's are.
func makeFiles(b *testing.B, dir string, n, size int) {
	data := make([]byte, size)
	rand.Read(data)
	for i := range n {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", i/64))
		must(b, os.MkdirAll(sub, 0o755))
		must(b, os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%03d", i%64)), data, 0o644))
	}
}
