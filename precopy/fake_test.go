package precopy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/precopy/precopy/precopy/imagechain"
	"github.com/precopy/precopy/precopy/policy"
)

// clock is the engine's clock in tests: it moves only when a fake CRIU
// call takes time.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

// fakeCRIU stands in for CRIU and the container: a dump writes a pages
// file (and the parent link, as CRIU does) into its image dir and its
// statistics, as JSON, into its work dir, and takes the dump's wall time
// on the clock. The statistics of pre-dumps come from rounds, those of
// final dumps from finals, each in order, then repeating the last.
type fakeCRIU struct {
	clock          *clock
	rounds, finals []policy.Round
	// predumps are the dirs each pre-dump got; parents the parents each
	// final dump got.
	predumps []Dirs
	parents  []string
	// failPreDump fails that pre-dump (1 is the first); failFinal fails
	// the final dumps whose parent is not "" (with rounds) or all of them.
	failPreDump        int
	failFinal, failAll bool
	recoveries         int
	// ranWhilePaused is what RecoverFailedDump says: the failed dump's
	// CRIU thawed the container the client had paused.
	ranWhilePaused bool
	pids           []int
	interruptAt    int
	interrupt      chan struct{}
	checkpoint     Checkpoint
	// parentSeen, if set, is called with the parent dir of each dump
	// that has one, while the dump runs.
	parentSeen func(dir string)
}

// nth is stats[n], or the last of them.
func nth(stats []policy.Round, n int) policy.Round { return stats[min(n, len(stats)-1)] }

// write does a dump with statistics r into image/work on parent.
func (f *fakeCRIU) write(r policy.Round, image, work, parent string) error {
	f.clock.now = f.clock.now.Add(r.Wall)
	if parent != "" {
		if err := os.Symlink(parent, filepath.Join(image, "parent")); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(image, "pages-1.img"), make([]byte, 4096*max(1, int(r.PagesWritten%16))), 0o600); err != nil {
		return err
	}
	// What else of an image a dump against it as parent reads.
	for _, name := range []string{"inventory.img", "pagemap-1.img"} {
		if err := os.WriteFile(filepath.Join(image, name), []byte(name), 0o600); err != nil {
			return err
		}
	}
	if f.parentSeen != nil && parent != "" {
		f.parentSeen(filepath.Join(image, parent))
	}
	if err := os.MkdirAll(work, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(work, "stats.json"), b, 0o600)
}

func (f *fakeCRIU) PreDump(_ context.Context, d Dirs) error {
	f.predumps = append(f.predumps, d)
	if len(f.predumps) == f.interruptAt {
		close(f.interrupt)
	}
	if len(f.predumps) == f.failPreDump {
		return errors.New("criu died")
	}
	return f.write(nth(f.rounds, len(f.predumps)-1), d.Image, d.Work, d.Parent)
}

func (f *fakeCRIU) Pids(context.Context) ([]int, error) {
	if f.pids == nil {
		return nil, errors.New("no task")
	}
	return f.pids, nil
}

func (f *fakeCRIU) RecoverFailedDump(context.Context) bool {
	f.recoveries++
	return f.ranWhilePaused
}

func (f *fakeCRIU) Dump(_ context.Context, parent string) error {
	f.parents = append(f.parents, parent)
	if f.failAll || (f.failFinal && parent != "") {
		return errors.New("final dump: criu died")
	}
	return f.write(nth(f.finals, len(f.parents)-1), f.checkpoint.ImageDir, f.checkpoint.WorkDir, parent)
}

// readStats is the StatsReader of fakeCRIU's statistics.
func readStats(work string) (policy.Round, error) {
	var r policy.Round
	b, err := os.ReadFile(filepath.Join(work, "stats.json"))
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	return r, err
}

// flattenParent is a Flattener that removes the parent link, after
// checking that it leads within the bound, failing for dirs named failOn
// ("": none).
func flattenParent(failOn string) Flattener {
	return func(dir, within string) (imagechain.Result, error) {
		target, err := os.Readlink(filepath.Join(dir, "parent"))
		if err != nil {
			return imagechain.Result{}, err
		}
		if parent := filepath.Join(dir, target); !strings.HasPrefix(parent, within+"/") {
			return imagechain.Result{}, fmt.Errorf("parent %s outside %s", parent, within)
		}
		if failOn != "" && filepath.Base(dir) == failOn {
			return imagechain.Result{TakeoverRefused: "a test"}, errors.New("bad pagemap")
		}
		return imagechain.Result{Flattened: true}, os.Remove(filepath.Join(dir, "parent"))
	}
}

// testLogger logs to the test; with failOnWarn a warning fails it.
type testLogger struct {
	t          *testing.T
	failOnWarn bool
}

func (l testLogger) Infof(format string, args ...any) { l.t.Logf("info: "+format, args...) }

func (l testLogger) Warnf(format string, args ...any) {
	if l.failOnWarn {
		l.t.Errorf("warn: "+format, args...)
		return
	}
	l.t.Logf("warn: "+format, args...)
}

// newFakeEngine is an engine on f with rounds under a temp dir, checkpoints
// into image (made by the test), and a policy of fixed rounds.
func newFakeEngine(t *testing.T, f *fakeCRIU, cfg policy.Config) *Engine {
	t.Helper()
	if f.clock == nil {
		// Real time to start with: a request's deadline is.
		f.clock = &clock{now: time.Now()}
	}
	if f.pids == nil {
		f.pids = []int{os.Getpid()}
	}
	dir := t.TempDir()
	e := New(f, cfg, "always", filepath.Join(dir, "bundle", "precopy"), testLogger{t: t})
	e.Stats, e.Flatten, e.Now = readStats, flattenParent(""), f.clock.Now
	image := filepath.Join(dir, "image")
	if err := os.Mkdir(image, 0o700); err != nil {
		t.Fatal(err)
	}
	f.checkpoint = Checkpoint{ImageDir: image, WorkDir: filepath.Join(dir, "work"), Dumper: f}
	return e
}

// fixed is a policy of n rounds.
func fixed(n int) policy.Config { return policy.Config{FixedRounds: n, TargetFreeze: time.Millisecond} }

// synthetic are dumps of a few pages each, one second long.
func synthetic(n int) []policy.Round {
	out := make([]policy.Round, n)
	for i := range out {
		out[i] = policy.Round{PagesWritten: uint64(100 + i), Frozen: 10 * time.Millisecond, Freezing: time.Millisecond, MemDump: 5 * time.Millisecond, Wall: time.Second}
	}
	return out
}
