package precopy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// fakeDumper writes a page file and the parent link, as CRIU would.
type fakeDumper struct {
	calls   []string // parents given
	failAt  int
	dumpErr error
}

func (f *fakeDumper) PreDump(_ context.Context, image, _ string, parent string) error {
	f.calls = append(f.calls, parent)
	if len(f.calls) == f.failAt {
		return f.dumpErr
	}
	if parent != "" {
		if err := os.Symlink(parent, filepath.Join(image, "parent")); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(image, "pages-1.img"), make([]byte, 4096), 0o600)
}

type stopAfter int

func (n stopAfter) Decide(rounds []Round, _ time.Duration) Decision {
	if len(rounds) < int(n) {
		return Decision{Continue: true, Reason: "more"}
	}
	return Decision{Reason: "enough"}
}

func newTestEngine(t *testing.T, d PreDumper, p Policy, flattened *[]string) *Engine {
	return &Engine{
		Dumper: d,
		Policy: p,
		Stats:  func(string) (Round, error) { return Round{PagesWritten: 1}, nil },
		Flatten: func(dir string) error {
			*flattened = append(*flattened, filepath.Base(dir))
			return os.Remove(filepath.Join(dir, "parent"))
		},
		Dir: filepath.Join(t.TempDir(), "rounds"),
	}
}

func TestEngineChainsRoundsAndFlattensWhileRunning(t *testing.T) {
	d := &fakeDumper{}
	var flattened []string
	e := newTestEngine(t, d, stopAfter(3), &flattened)
	c, err := e.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Rounds) != 3 || c.Stop.Reason != "enough" {
		t.Fatalf("rounds %d, stop %+v", len(c.Rounds), c.Stop)
	}
	if want := []string{"", "../round-1", "../round-2"}; !slices.Equal(d.calls, want) {
		t.Errorf("parents %q, want %q", d.calls, want)
	}
	if want := []string{"round-2", "round-3"}; !slices.Equal(flattened, want) {
		t.Errorf("flattened %q, want %q", flattened, want)
	}
	// Only the last round is kept: earlier ones were merged into it.
	if _, err := os.Stat(filepath.Join(e.Dir, "round-2")); !os.IsNotExist(err) {
		t.Errorf("round-2 kept after round-3 was flattened: %v", err)
	}
	if c.LastImage() != filepath.Join(e.Dir, "round-3") {
		t.Errorf("last image %s", c.LastImage())
	}
	for i, r := range c.Rounds {
		if want := int64(4096 * (1 - min(i, 1))); r.Index != i+1 || r.ImageBytes != want {
			t.Errorf("round %d: %+v", i, r)
		}
	}
	if err := c.Discard(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.Dir); !os.IsNotExist(err) {
		t.Errorf("rounds not discarded: %v", err)
	}
}

func TestEngineFailedRoundLeavesNothing(t *testing.T) {
	boom := errors.New("criu died")
	d := &fakeDumper{failAt: 2, dumpErr: boom}
	var flattened []string
	e := newTestEngine(t, d, stopAfter(5), &flattened)
	if _, err := e.Run(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("err %v, want %v", err, boom)
	}
	if _, err := os.Stat(e.Dir); !os.IsNotExist(err) {
		t.Errorf("failed pre-copy left %s: %v", e.Dir, err)
	}
}

func TestEngineStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var flattened []string
	e := newTestEngine(t, &fakeDumper{}, stopAfter(5), &flattened)
	if _, err := e.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

// interruptingDumper closes interrupt during its second round.
type interruptingDumper struct {
	fakeDumper
	interrupt chan struct{}
}

func (d *interruptingDumper) PreDump(ctx context.Context, image, work, parent string) error {
	if len(d.calls) == 1 {
		close(d.interrupt)
	}
	return d.fakeDumper.PreDump(ctx, image, work, parent)
}

func TestEngineInterruptEndsAfterTheRoundInProgress(t *testing.T) {
	d := &interruptingDumper{interrupt: make(chan struct{})}
	var flattened []string
	e := newTestEngine(t, d, stopAfter(5), &flattened)
	e.Interrupt = d.interrupt
	c, err := e.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Rounds) != 2 || c.Stop.Reason != ReasonInterrupted || c.Stop.Continue {
		t.Errorf("rounds %d, stop %+v; want 2 rounds, interrupted", len(c.Rounds), c.Stop)
	}
}
