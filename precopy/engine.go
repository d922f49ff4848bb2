// Package precopy is the pre-copy engine: rounds of CRIU pre-dump on a
// running container, each copying only what was dirtied since the last,
// until a policy says the final dump will be short enough; then the final
// dump's image is flattened so it stands alone. It imports nothing from
// containerd: it reaches the runtime through PreDumper, so it is tested
// with fakes and recorded CRIU images.
package precopy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// PreDumper pre-dumps the running container: CRIU copies its memory into
// imageDir (statistics into workDir) and the container runs on. parent, if
// not empty, is the previous round's image dir relative to imageDir, so
// only pages dirtied since then are copied.
type PreDumper interface {
	PreDump(ctx context.Context, imageDir, workDir, parent string) error
}

// Round is one pre-dump round as the policy sees it.
type Round struct {
	Index int `json:"index"`
	// From CRIU's dump statistics.
	PagesScanned       uint64 `json:"pages_scanned"`
	PagesWritten       uint64 `json:"pages_written"`
	PagesSkippedParent uint64 `json:"pages_skipped_parent"`
	// Freezing is how long freezing the task took, Frozen how long it then
	// stayed frozen: the app's pause is their sum.
	Freezing time.Duration `json:"freezing_ns"`
	Frozen   time.Duration `json:"frozen_ns"`
	MemDump  time.Duration `json:"memdump_ns"`
	MemWrite time.Duration `json:"memwrite_ns"`
	// Measured by the engine.
	Start time.Time     `json:"start"`
	Wall  time.Duration `json:"wall_ns"`
	// ImageBytes is how much this round added to the images pre-copy
	// holds: each round is merged into one flat image set, so the growth
	// of that set, not its size.
	ImageBytes int64 `json:"image_bytes"`
	// Flatten is what making this round stand alone cost, while the
	// container ran.
	Flatten time.Duration `json:"flatten_ns"`
	// Dirtied is how many pages the container wrote from the round's
	// start (CRIU's soft-dirty reset) until DirtiedAfter later, counted
	// right after the round; zero DirtiedAfter when not counted.
	Dirtied      uint64        `json:"dirtied_pages,omitempty"`
	DirtiedAfter time.Duration `json:"dirtied_after_ns,omitempty"`
}

// Decision is a policy's answer after a round.
type Decision struct {
	Continue bool `json:"continue"`
	// Reason says why the policy stopped (or went on).
	Reason string `json:"reason"`
	// PredictedFreeze is what the policy expects the final dump to freeze.
	PredictedFreeze time.Duration `json:"predicted_freeze_ns"`
}

// Policy decides after each round whether another one is worth it.
type Policy interface {
	Decide(rounds []Round, elapsed time.Duration) Decision
}

// StatsReader reads the statistics CRIU left in a round's work dir.
type StatsReader func(workDir string) (Round, error)

// Flattener makes an image dir stand alone, resolving its parent chain.
// The engine removes the parent right after a successful flatten and
// gives up the chain after a failed one, so a Flattener may consume the
// parent (imagechain.FlattenConsuming).
type Flattener func(dir string) error

// Engine runs pre-copy rounds for one checkpoint.
type Engine struct {
	Dumper  PreDumper
	Policy  Policy
	Stats   StatsReader
	Flatten Flattener
	// Dir holds the rounds; it should be on tmpfs. The engine creates it.
	Dir string
	// Dirtied, if set, counts the container's soft-dirty pages (see
	// CountSoftDirty); the engine asks right after each round.
	Dirtied func() (uint64, error)
	// Interrupt, when closed, ends pre-copy after the round in progress
	// (a Resume that overtook the Pause pre-copying): the rounds so far
	// are kept, with the stop reason "interrupted". Nil: never.
	Interrupt <-chan struct{}
}

// ReasonInterrupted is the stop reason of rounds ended by Interrupt.
const ReasonInterrupted = "interrupted"

// Chain is the outcome of pre-copy: the rounds, each flattened, and why
// they stopped. The last round is the parent of the final dump.
type Chain struct {
	Dir      string   `json:"-"`
	Rounds   []Round  `json:"rounds"`
	Stop     Decision `json:"stop"`
	Duration time.Duration
	dirs     []string
	held     int64 // bytes of the last round's flat image set
}

// LastImage is the image dir of the last round.
func (c *Chain) LastImage() string { return c.dirs[len(c.dirs)-1] }

// Discard removes every round's images.
func (c *Chain) Discard() error { return os.RemoveAll(c.Dir) }

// Pause is what the app perceives of a freeze.
func (r Round) Pause() time.Duration { return r.Freezing + r.Frozen }

// Run pre-dumps until the policy stops it, ctx ends, or a round fails. On
// failure it removes what it wrote and returns the error: the caller falls
// back to a one-shot dump. CRIU thaws the container after each round, so
// the container is never left frozen.
func (e *Engine) Run(ctx context.Context) (_ *Chain, retErr error) {
	if err := os.MkdirAll(e.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("pre-copy: %w", err)
	}
	c := &Chain{Dir: e.Dir}
	defer func() {
		if retErr != nil {
			c.Discard()
		}
	}()
	start := time.Now()
	for i := 1; ; i++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("pre-copy round %d: %w", i, err)
		}
		round, err := e.round(ctx, i, c)
		if err != nil {
			return nil, fmt.Errorf("pre-copy round %d: %w", i, err)
		}
		c.Rounds = append(c.Rounds, round)
		d := e.Policy.Decide(c.Rounds, time.Since(start))
		select {
		case <-e.Interrupt:
			d = Decision{Reason: ReasonInterrupted, PredictedFreeze: d.PredictedFreeze}
		default:
		}
		if !d.Continue {
			c.Stop = d
			c.Duration = time.Since(start)
			return c, nil
		}
	}
}

func (e *Engine) round(ctx context.Context, i int, c *Chain) (Round, error) {
	image := filepath.Join(e.Dir, fmt.Sprintf("round-%d", i))
	work := filepath.Join(e.Dir, fmt.Sprintf("work-%d", i))
	for _, d := range []string{image, work} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return Round{}, err
		}
	}
	parent := ""
	if len(c.dirs) > 0 {
		parent = filepath.Join("..", filepath.Base(c.LastImage()))
	}
	begin := time.Now()
	if err := e.Dumper.PreDump(ctx, image, work, parent); err != nil {
		return Round{}, err
	}
	wall := time.Since(begin)
	r, err := e.Stats(work)
	if err != nil {
		return Round{}, fmt.Errorf("statistics: %w", err)
	}
	r.Index, r.Start, r.Wall = i, begin, wall
	if e.Dirtied != nil {
		// A failed count only costs the policy an early signal.
		if n, err := e.Dirtied(); err == nil {
			r.Dirtied, r.DirtiedAfter = n, time.Since(begin)
		}
	}
	// Flatten now, while the container runs, so that the final dump's
	// parent stands alone and the frozen flatten resolves one level only.
	if parent != "" {
		f := time.Now()
		if err := e.Flatten(image); err != nil {
			return Round{}, fmt.Errorf("flatten: %w", err)
		}
		r.Flatten = time.Since(f)
		// The previous round is now redundant: every page it held was
		// copied into this one.
		if err := os.RemoveAll(c.LastImage()); err != nil {
			return Round{}, err
		}
	}
	r.ImageBytes = dirBytes(image) - c.held
	c.held += r.ImageBytes
	c.dirs = append(c.dirs, image)
	return r, nil
}

// dirBytes is the size of the regular files in dir.
func dirBytes(dir string) int64 {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
	}
	return n
}
