package main

import (
	"strings"
	"testing"
	"time"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/policy"
)

// TestPeriodicDetailsShowsFlattens: the periodic line says, per round,
// what its flatten took over or copied, why it copied, and whether it
// waited for the final dump.
func TestPeriodicDetailsShowsFlattens(t *testing.T) {
	r := &precopy.Report{Rounds: []policy.Round{
		{Index: 1, PagesWritten: 900, PagesSkippedParent: 261000, Flatten: 4200 * time.Millisecond, FlattenCopied: 261000, FlattenCopyReason: `pagemap-1.img: page layout differs "early"`},
		{Index: 2, PagesWritten: 100, PagesSkippedParent: 261800, Flatten: 195 * time.Millisecond, FlattenTakenOver: 261790, FlattenCopied: 10, FlattenAfterDump: true},
	}}
	s := periodicDetails(r)
	for _, want := range []string{
		` round1=[written=900 skipped_parent=261000 wall=0 flatten=4200 taken_over=0 copied=261000 copied_because="pagemap-1.img: page layout differs \"early\""]`,
		` round2=[written=100 skipped_parent=261800 wall=0 flatten=195 taken_over=261790 copied=10 flatten_after_final_dump]`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("%s\nlacks %s", s, want)
		}
	}
}

// TestSeriesOrderAlternates: odd runs start without incremental, even runs
// with it, so that over two runs each series runs first once.
func TestSeriesOrderAlternates(t *testing.T) {
	for i, want := range map[int][]bool{1: {false, true}, 2: {true, false}, 3: {false, true}} {
		if got := seriesOrder(i); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
			t.Errorf("seriesOrder(%d) = %v, want %v", i, got, want)
		}
	}
}
