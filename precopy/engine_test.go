package precopy

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/precopy/precopy/precopy/imagechain"
	"github.com/precopy/precopy/precopy/policy"
)

func TestPreCopyChainsRoundsAndFlattensWhileRunning(t *testing.T) {
	f := &fakeCRIU{rounds: synthetic(3)}
	e := newFakeEngine(t, f, fixed(3))
	r := e.PreCopy(t.Context(), TriggerPause, nil, false)
	if !r.PreCopied() || len(r.Report.Rounds) != 3 || r.Report.Stop.Reason != policy.ReasonFixedRounds {
		t.Fatalf("pre-copied %v, report %+v", r.PreCopied(), r.Report)
	}
	var parents []string
	for _, d := range f.predumps {
		parents = append(parents, d.Parent)
	}
	if want := []string{"", "../round-1", "../round-2"}; !slices.Equal(parents, want) {
		t.Errorf("parents %q, want %q", parents, want)
	}
	// Only the last round is kept, flat: earlier ones were flattened into it.
	if _, err := os.Stat(filepath.Dir(r.image) + "/round-2"); !os.IsNotExist(err) {
		t.Errorf("round-2 kept after round-3 was flattened: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(r.image, "parent")); !os.IsNotExist(err) {
		t.Errorf("last round not flat: %v", err)
	}
	for i, rd := range r.Report.Rounds {
		if rd.Index != i+1 || rd.Start.IsZero() || rd.Wall != time.Second || rd.DirtiedAfter == 0 {
			t.Errorf("round %d: %+v", i+1, rd)
		}
	}
	if r.Report.Rounds[0].ImageBytes <= 0 || r.Report.PreCopy != 3*time.Second || r.Report.Trigger != TriggerPause || r.Report.Mode != "always" {
		t.Errorf("report %+v", r.Report)
	}
	if err := r.Discard(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.Dir); !os.IsNotExist(err) || r.PreCopied() {
		t.Errorf("rounds not discarded: %v", err)
	}
}

func TestPreCopyFailedRoundThawsAndLeavesNothing(t *testing.T) {
	f := &fakeCRIU{rounds: synthetic(3), failPreDump: 2}
	e := newFakeEngine(t, f, fixed(3))
	r := e.PreCopy(t.Context(), TriggerCheckpoint, nil, false)
	if r.PreCopied() || !strings.Contains(r.Report.Skipped, "pre-copy round 2: criu died") || r.Report.PreCopied {
		t.Fatalf("report %+v", r.Report)
	}
	if f.recoveries != 1 {
		t.Errorf("%d recoveries after the failed round, want 1", f.recoveries)
	}
	if _, err := os.Stat(e.Dir); !os.IsNotExist(err) {
		t.Errorf("a failed pre-copy left its dir: %v", err)
	}
}

func TestPreCopySkips(t *testing.T) {
	self := []int{os.Getpid()}
	for name, tc := range map[string]struct {
		cfg      policy.Config
		pids     []int // nil: the task is gone
		deadline time.Duration
		want     string
	}{
		"no processes":   {policy.Config{MaxRounds: 3, MinSize: 1}, []int{}, 0, "policy: too-small"},
		"task gone":      {fixed(2), nil, 0, "container processes: no task"},
		"no rounds":      {policy.Config{}, self, 0, "policy: max-rounds"},
		"near deadline":  {fixed(2), self, 3 * time.Second, "the request's deadline leaves 1.5s"},
		"far deadline":   {fixed(2), self, time.Hour, ""},
		"min size":       {policy.Config{MaxRounds: 3, MinSize: 1 << 50}, self, 0, "policy: too-small"},
		"memory budget":  {policy.Config{MaxRounds: 3, MemoryBudget: 1}, self, 0, "policy: memory-budget"},
		"adaptive, runs": {policy.Config{MaxRounds: 1, TargetFreeze: time.Millisecond}, self, 0, ""},
	} {
		t.Run(name, func(t *testing.T) {
			f := &fakeCRIU{rounds: synthetic(2)}
			e := newFakeEngine(t, f, tc.cfg)
			f.pids = tc.pids
			ctx := t.Context()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, f.clock.now.Add(tc.deadline))
				defer cancel()
			}
			r := e.PreCopy(ctx, TriggerPause, nil, false)
			if !strings.HasPrefix(r.Report.Skipped, tc.want) || r.PreCopied() == (tc.want != "") {
				t.Errorf("skipped %q (pre-copied %v), want %q", r.Report.Skipped, r.PreCopied(), tc.want)
			}
		})
	}
}

func TestPreCopyStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	e := newFakeEngine(t, &fakeCRIU{rounds: synthetic(1)}, fixed(5))
	if r := e.PreCopy(ctx, TriggerPause, nil, false); r.PreCopied() || !strings.Contains(r.Report.Skipped, "context canceled") {
		t.Fatalf("report %+v, want skipped for the cancelled context", r.Report)
	}
}

func TestPreCopyInterruptEndsAfterTheRoundInProgress(t *testing.T) {
	f := &fakeCRIU{rounds: synthetic(1), interruptAt: 2, interrupt: make(chan struct{})}
	e := newFakeEngine(t, f, fixed(5))
	r := e.PreCopy(t.Context(), TriggerPause, f.interrupt, false)
	if len(r.Report.Rounds) != 2 || r.Report.Stop.Reason != policy.ReasonInterrupted || !r.PreCopied() {
		t.Errorf("rounds %d, stop %+v; want 2 rounds, interrupted", len(r.Report.Rounds), r.Report.Stop)
	}
}

// TestDiscardIsTheRoundsOwn: rounds discarded late (by a timer armed for
// them) leave a later pre-copy's rounds alone.
func TestDiscardIsTheRoundsOwn(t *testing.T) {
	e := newFakeEngine(t, &fakeCRIU{rounds: synthetic(1)}, fixed(1))
	old := e.PreCopy(t.Context(), TriggerPause, nil, false)
	newer := e.PreCopy(t.Context(), TriggerPause, nil, false)
	if err := old.Discard(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(newer.image); err != nil || !newer.PreCopied() {
		t.Fatalf("the newer rounds went with the old: %v", err)
	}
	if err := old.Discard(); err != nil {
		t.Errorf("discard twice: %v", err)
	}
}

// recorded reads a recording of ../policy/testdata (its README says how
// they were made): the rounds, the final dump on them, and a one-shot dump.
func recorded(t *testing.T, scenario string) (rounds []policy.Round, final, oneShot policy.Round) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("policy", "testdata", scenario+".json"))
	if err != nil {
		t.Fatal(err)
	}
	type dump struct {
		WallMS float64            `json:"wall_ms"`
		Stats  map[string]float64 `json:"stats"`
	}
	var rec struct {
		Rounds  []dump `json:"rounds"`
		Final   dump   `json:"final_dump"`
		OneShot dump   `json:"one_shot"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	// CRIU's statistics as the engine's StatsReader gives them.
	asRound := func(d dump) policy.Round {
		us := func(k string) time.Duration { return time.Duration(d.Stats[k+"_time_us"]) * time.Microsecond }
		pages := func(k string) uint64 { return uint64(d.Stats["pages_"+k]) }
		return policy.Round{
			PagesScanned: pages("scanned"), PagesWritten: pages("written"), PagesSkippedParent: pages("skipped_parent"),
			Freezing: us("freezing"), Frozen: us("frozen"), MemDump: us("memdump"), MemWrite: us("memwrite"),
			Wall: time.Duration(d.WallMS * float64(time.Millisecond)),
		}
	}
	for _, d := range rec.Rounds {
		rounds = append(rounds, asRound(d))
	}
	return rounds, asRound(rec.Final), asRound(rec.OneShot)
}

// tcgConfig is the policy as the recordings' machine needs it (see
// policy's recorded_test.go): a fixed cost of 200 ms, a target of 400.
func tcgConfig() policy.Config {
	c := policy.DefaultConfig()
	c.FinalDumpFixedCost, c.TargetFreeze, c.MinSize = 200*time.Millisecond, 400*time.Millisecond, 0
	return c
}

// TestRoundsRecordWhatTheirFlattenDid: each round, and the final dump,
// records the pages its flatten took over or copied, the ranges it
// shifted, and why it copied,
// as the flattener said; the report's JSON carries them, and leaves them
// out for a round that flattened nothing (the first).
func TestRoundsRecordWhatTheirFlattenDid(t *testing.T) {
	f := &fakeCRIU{rounds: synthetic(3), finals: synthetic(1)}
	e := newFakeEngine(t, f, fixed(3))
	const why = "pagemap-1.img: page layout differs from the parent's at flat offset 4096 (vaddr 0x1000, not in the parent's pagemap) of 40960 bytes: the tail to rewrite (36864 bytes) is longer than the prefix kept"
	results := map[string]imagechain.Result{
		"round-2": {PagesTakenOver: 250, PagesCopied: 2, RangeShifts: 3},
		"round-3": {PagesCopied: 252, TakeoverRefused: why},
		"image":   {PagesTakenOver: 251, PagesCopied: 1},
	}
	flatten := e.Flatten
	e.Flatten = func(dir, within string) (imagechain.Result, error) {
		if _, err := flatten(dir, within); err != nil {
			return imagechain.Result{}, err
		}
		res, ok := results[filepath.Base(dir)]
		if !ok {
			t.Errorf("flatten of %s", dir)
		}
		res.Flattened = true
		return res, nil
	}
	report, err := e.Checkpoint(t.Context(), e.PreCopy(t.Context(), TriggerPause, nil, false), f.checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	type flattened struct {
		takenOver, copied uint64
		why               string
		shifts            int
	}
	var got []flattened
	for _, rd := range append(slices.Clone(report.Rounds), *report.Final) {
		got = append(got, flattened{rd.FlattenTakenOver, rd.FlattenCopied, rd.FlattenCopyReason, rd.FlattenRangeShifts})
	}
	want := []flattened{{}, {250, 2, "", 3}, {0, 252, why, 0}, {251, 1, "", 0}}
	if !slices.Equal(got, want) {
		t.Errorf("rounds and final recorded %+v, want %+v", got, want)
	}
	b, err := json.Marshal(report)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Rounds[2].FlattenCopyReason != why || back.Rounds[1].FlattenTakenOver != 250 || back.Rounds[1].FlattenRangeShifts != 3 || back.Final.FlattenTakenOver != 251 {
		t.Errorf("the report's JSON lost them: %s", b)
	}
	var raw struct {
		Rounds []map[string]any `json:"rounds"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"flatten_taken_over_pages", "flatten_copied_pages", "flatten_copy_reason"} {
		if _, ok := raw.Rounds[0][k]; ok {
			t.Errorf("round 1, which flattened nothing, has %s", k)
		}
	}
}
