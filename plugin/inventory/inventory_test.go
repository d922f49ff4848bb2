package inventory

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
)

func TestJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "content.inventory")
	if held, found, err := Read(path); err != nil || found || len(held) != 0 {
		t.Fatalf("missing journal: %v, %v, %v", held, found, err)
	}
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.FromString("c")
	inv, err := Create(path, Blobs{a: 1})
	if err != nil {
		t.Fatal(err)
	}
	inv.Committed(content.Info{Digest: b, Size: 2}, nil)
	inv.Committed(content.Info{Digest: c, Size: 3}, nil)
	inv.Deleted(a)
	inv.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("journal file: %v, %v", fi, err)
	}

	// A crash mid-write leaves a torn last line.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("- " + string(c)[:20])
	f.Close()

	held, found, err := Read(path)
	if err != nil || !found {
		t.Fatal(found, err)
	}
	if len(held) != 2 || held[b] != 2 || held[c] != 3 || held.Size() != 5 {
		t.Errorf("held %v, want b and c", held)
	}
}

// TestCompaction checks that a journal of mostly deletes is rewritten
// and still says the same.
func TestCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "content.inventory")
	inv, err := Create(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	kept := digest.FromString("kept")
	inv.Committed(content.Info{Digest: kept, Size: 7}, nil)
	for i := range compactAfter {
		d := digest.FromString(string(rune(i)))
		inv.Committed(content.Info{Digest: d, Size: 1}, nil)
		inv.Deleted(d)
	}
	if err := inv.Err(); err != nil {
		t.Fatal(err)
	}
	inv.Close()
	b, _ := os.ReadFile(path)
	if lines := bytes.Count(b, []byte("\n")); lines > compactAfter+3 {
		t.Errorf("journal of one blob after %d changes has %d lines: not compacted", 2*compactAfter+1, lines)
	}
	held, _, err := Read(path)
	if err != nil || len(held) != 1 || held[kept] != 7 {
		t.Errorf("after compaction: %v, %v", held, err)
	}
}
