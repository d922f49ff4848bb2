package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/precopy/precopy/integration/workload"
)

func TestPacerKeepsTheAverageRate(t *testing.T) {
	p := newPacer(1, 10*time.Millisecond) // 256 pages/s: 2.56 pages per tick
	var total uint64
	for range 100 {
		total += p.pages(10 * time.Millisecond)
	}
	if total != 256 {
		t.Fatalf("%d pages in one second at 1 MiB/s, want 256", total)
	}
}

func TestPacerCatchesUpOneTickAtMost(t *testing.T) {
	p := newPacer(100, 10*time.Millisecond) // 256 pages per tick
	if got := p.pages(5 * time.Second); got != 512 {
		t.Fatalf("%d pages after a 5 s stall, want 512 (two ticks)", got)
	}
	if got := p.pages(-time.Second); got != 0 {
		t.Fatalf("%d pages for negative elapsed time, want 0", got)
	}
}

func TestIdlePacer(t *testing.T) {
	p := newPacer(0, 10*time.Millisecond)
	if got := p.pages(time.Second); got != 0 {
		t.Fatalf("idle pacer asked for %d pages", got)
	}
}

func TestGapMeterExcludesQueries(t *testing.T) {
	var g gapMeter
	t0 := time.Now()
	g.begin(t0)
	g.observe(t0.Add(10 * time.Millisecond))
	// A 300 ms query in the iteration that started at 10 ms; the next
	// iteration starts 15 ms after the query ended.
	g.exclude(300 * time.Millisecond)
	if gap := g.observe(t0.Add(325 * time.Millisecond)); gap != 15*time.Millisecond {
		t.Fatalf("gap after a query = %v, want 15ms", gap)
	}
	if g.maxGap != 15*time.Millisecond {
		t.Fatalf("max gap = %v, want 15ms", g.maxGap)
	}
	g.observe(t0.Add(2325 * time.Millisecond)) // a 2 s freeze
	if g.maxGap != 2*time.Second || g.maxWallGap != 2*time.Second {
		t.Fatalf("max gaps = %v, %v, want 2s", g.maxGap, g.maxWallGap)
	}
	g.reset()
	if g.maxGap != 0 || g.lastGap != 2*time.Second {
		t.Fatalf("after reset: max %v, last %v", g.maxGap, g.lastGap)
	}
}

// TestStatusFileMismatch: a status file that is not the one the process
// last wrote (a restored file system of another moment than the memory)
// is counted at the next write; its own files are not.
func TestStatusFileMismatch(t *testing.T) {
	mem, err := workload.NewMemory(make([]byte, 4*4096), 1, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{statusPath: filepath.Join(t.TempDir(), "status.json")}
	l := newLoop(cfg, mem, time.Now())
	for i := 0; i < 3; i++ {
		if err := l.writeStatus(); err != nil {
			t.Fatal(err)
		}
	}
	if l.status.FileMismatches != 0 {
		t.Fatalf("its own writes counted: %s", l.status.FirstFileMismatch)
	}
	// A file from later than the memory, as a diff taken after a thaw
	// would hold.
	later := l.status
	later.StatusSeq += 5
	if err := workload.WriteStatus(cfg.statusPath, later); err != nil {
		t.Fatal(err)
	}
	if err := l.writeStatus(); err != nil {
		t.Fatal(err)
	}
	if l.status.FileMismatches != 1 || !strings.Contains(l.status.FirstFileMismatch, "holds status 8, this process last wrote 3") {
		t.Fatalf("mismatches %d: %q", l.status.FileMismatches, l.status.FirstFileMismatch)
	}
}
