package imagechain

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestPagesWriter copies the same plan with copy_file_range and with the
// read/write fallback, and checks that a range past a source's end fails.
func TestPagesWriter(t *testing.T) {
	dir := t.TempDir()
	srcs := make([]*os.File, 2)
	data := make([][]byte, 2)
	for i := range srcs {
		data[i] = make([]byte, 3*copyBufferSize+123)
		for j := range data[i] {
			data[i][j] = byte(rand.IntN(256))
		}
		path := filepath.Join(dir, "src"+string(rune('a'+i)))
		if err := os.WriteFile(path, data[i], 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		srcs[i] = f
	}
	var plan copyPlan
	var want []byte
	for _, op := range []struct {
		src    int
		off, n int64
	}{
		{0, 0, 10}, {0, 10, 4096}, {1, 5, copyBufferSize + 7}, {0, 100, 2*copyBufferSize + 5}, {1, 0, 1},
	} {
		plan.add(srcs[op.src], op.off, op.n)
		want = append(want, data[op.src][op.off:op.off+op.n]...)
	}
	if len(plan.ops) != 4 {
		t.Errorf("plan has %d ops, want 4 (two neighbours merged)", len(plan.ops))
	}
	for _, fallback := range []bool{false, true} {
		dst, err := os.Create(filepath.Join(dir, "dst"))
		if err != nil {
			t.Fatal(err)
		}
		w := &pagesWriter{dst: dst, noCopyRange: fallback}
		if err := w.run(&plan); err != nil {
			t.Fatal(err)
		}
		dst.Close()
		got, _ := os.ReadFile(dst.Name())
		if !bytes.Equal(got, want) {
			t.Errorf("fallback %v: copied %d bytes, differ from the %d expected", fallback, len(got), len(want))
		}

		short := copyPlan{ops: []copyOp{{srcs[0], int64(len(data[0])) - 10, 20}}}
		dst, _ = os.Create(filepath.Join(dir, "dst"))
		err = (&pagesWriter{dst: dst, noCopyRange: fallback}).run(&short)
		dst.Close()
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("fallback %v: copy past the end: %v, want unexpected EOF", fallback, err)
		}
	}
}
