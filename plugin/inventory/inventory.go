// Package inventory keeps a record of which blobs precopyd's content store
// holds (digests and sizes, never the bytes) in a small file that outlives
// the process, so that a precopyd starting again can say what its
// predecessor held and has been lost with it, instead of losing
// checkpoints silently. The file is a journal: a line per commit
// ("+ <digest> <size>") or delete ("- <digest>"), appended with one write
// each, so that a crash loses at most the line being written; it is
// compacted when a new precopyd takes it over.
package inventory

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
)

// Inventory is the open journal. It implements memstore.Observer.
type Inventory struct {
	path string

	mu    sync.Mutex
	f     *os.File
	held  Blobs // what the file says, kept to compact it
	lines int   // lines in the file
	err   error // first write error
}

// Blobs are what an inventory records: size by digest.
type Blobs map[digest.Digest]int64

// Size is the total of the sizes.
func (b Blobs) Size() int64 {
	var n int64
	for _, s := range b {
		n += s
	}
	return n
}

// Read replays the journal at path: the blobs held when its last writer
// stopped. A missing file is no blobs and no error; found says whether
// there was one. A torn last line (a crash mid-write) is ignored.
func Read(path string) (held Blobs, found bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Blobs{}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read inventory: %w", err)
	}
	defer f.Close()
	held = Blobs{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		switch {
		case len(fields) == 3 && fields[0] == "+":
			d, err := digest.Parse(fields[1])
			size, err2 := strconv.ParseInt(fields[2], 10, 64)
			if err == nil && err2 == nil {
				held[d] = size
			}
		case len(fields) == 2 && fields[0] == "-":
			delete(held, digest.Digest(fields[1]))
		}
	}
	if err := s.Err(); err != nil {
		return nil, true, fmt.Errorf("read inventory %s: %w", path, err)
	}
	return held, true, nil
}

// Create starts the journal at path afresh with the blobs held now
// (replacing the file atomically) and opens it for appending. The file is
// 0600 in its directory, which is created 0700 if missing.
func Create(path string, held Blobs) (*Inventory, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	inv := &Inventory{path: path, held: Blobs{}}
	for d, size := range held {
		inv.held[d] = size
	}
	if err := inv.rewrite(); err != nil {
		return nil, err
	}
	return inv, nil
}

// rewrite replaces the file with one line per blob held and reopens it
// for appending.
func (inv *Inventory) rewrite() error {
	tmp, err := os.CreateTemp(filepath.Dir(inv.path), ".inventory-*")
	if err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	w := bufio.NewWriter(tmp)
	for d, size := range inv.held {
		fmt.Fprintf(w, "+ %s %d\n", d, size)
	}
	err = errors.Join(w.Flush(), tmp.Chmod(0o600), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), inv.path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("inventory: %w", err)
	}
	f, err := os.OpenFile(inv.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	if inv.f != nil {
		inv.f.Close()
	}
	inv.f, inv.lines = f, len(inv.held)
	return nil
}

// Committed records a new blob.
func (inv *Inventory) Committed(info content.Info, _ content.ReaderAt) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.held[info.Digest] = info.Size
	inv.append(fmt.Sprintf("+ %s %d\n", info.Digest, info.Size))
}

// Deleted records a deleted blob.
func (inv *Inventory) Deleted(dgst digest.Digest) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	delete(inv.held, dgst)
	inv.append(fmt.Sprintf("- %s\n", dgst))
}

// Updated does nothing: the inventory holds no labels.
func (inv *Inventory) Updated(content.Info) {}

// compactAfter is how many lines past twice the blobs held the journal may
// grow before it is rewritten.
const compactAfter = 4096

// append writes one line with one write(2), quick on the tmpfs the file
// is meant to live on (/run), which matters as the store calls it under
// its lock. Now and then, when deletes have left the journal mostly dead
// lines, it rewrites it instead: a rare pause of one short file's write.
// The caller holds inv.mu.
func (inv *Inventory) append(line string) {
	if inv.f == nil || inv.err != nil {
		return
	}
	inv.lines++
	var err error
	if inv.lines > 2*len(inv.held)+compactAfter {
		err = inv.rewrite()
	} else {
		_, err = inv.f.WriteString(line)
	}
	if err != nil {
		// Reported by Err; the store must not fail a commit for its
		// bookkeeping.
		inv.err = fmt.Errorf("inventory %s: %w", inv.path, err)
	}
}

// Err is the first write error, if any: from then on the inventory no
// longer records, and a restart could not say everything that was lost.
func (inv *Inventory) Err() error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.err
}

// Close closes the journal, leaving it for the next precopyd to read.
func (inv *Inventory) Close() error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.f == nil {
		return nil
	}
	err := inv.f.Close()
	inv.f = nil
	return err
}
