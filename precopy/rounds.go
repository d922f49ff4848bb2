package precopy

import (
	"os"
	"path/filepath"
	"time"
)

// Rounds is what pre-copy leaves for a checkpoint's final dump: the report
// so far (the rounds' statistics and why they stopped, or why there are
// none) and the one image set all the rounds copied into, which is the
// final dump's parent: flat, or with rounds still chained on a flat image
// when their flattens wait until after the final dump. Without that image
// the checkpoint is one-shot.
type Rounds struct {
	Report *Report
	// dir holds the rounds' files; image is the last round's image dir
	// ("" when there is none).
	dir   string
	image string
	// pending are the rounds (their indices, oldest first) whose flatten
	// waits (Engine.deferFlattens), each chained to the round before it
	// (round 0: the adopted kept image), which for the oldest stands
	// alone; none when image is flat.
	pending []int
	// parent is the earlier checkpoint whose kept image round 1 dumped
	// against (Engine.Incremental), what making its files the rounds' own
	// cost; nil when there was none, and noParent says why.
	parent   *Parent
	unshare  time.Duration
	noParent string
}

// PreCopied says whether the rounds hold an image for the final dump.
func (r *Rounds) PreCopied() bool { return r.image != "" }

// Discard removes the rounds' images, and the engine's dir once no rounds
// are left in it, so nothing of pre-copy stays in the bundle; the report
// stays. The checkpoint they were made for, if it still comes, is
// one-shot.
func (r *Rounds) Discard() error {
	dir := r.dir
	r.image, r.dir, r.pending = "", "", nil
	if dir == "" {
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	// Fails, as it should, while other rounds are there.
	os.Remove(filepath.Dir(dir))
	return nil
}

// discard is Discard with its error logged: nothing waits for it.
func (r *Rounds) discard(log Logger) {
	if err := r.Discard(); err != nil {
		log.Warnf("precopy: discard rounds: %v", err)
	}
}
