package policy

import "time"

// PageSize is the size of the pages CRIU counts (x86-64, arm64 with 4 KiB
// pages): byte sizes and page counts convert through it.
const PageSize = 4096

// Round is one pre-dump round: CRIU's statistics for it (stats-dump in its
// work dir) and the engine's own measurements.
type Round struct {
	// Index is 1 for the first round.
	Index int
	// PagesWritten is pages_written: the distinct pages copied this round.
	// Round 1 copies every resident page; later rounds only those dirtied
	// since the previous round reset soft-dirty.
	PagesWritten uint64
	// PagesSkippedParent is pages_skipped_parent: resident pages left out
	// because the parent round holds them unchanged.
	PagesSkippedParent uint64
	// PagesScanned is pages_scanned. It is not the resident set (see the
	// package doc) and the policy does not rely on it.
	PagesScanned uint64
	// Frozen is frozen_time: how long this round kept the task frozen.
	Frozen time.Duration
	// MemDump is memdump_time: in a pre-dump, collecting the pages, with
	// the task frozen in splice mode, after the thaw in read mode.
	MemDump time.Duration
	// MemWrite is memwrite_time: in a pre-dump, writing the collected pages
	// out after the task is thawed.
	MemWrite time.Duration
	// Start is when the round's runc/CRIU call began. Optional: when zero,
	// rounds are taken to run back to back and Wall stands in for the time
	// between two starts (which misses any work between rounds).
	Start time.Time
	// Wall is the round's duration from the start to the end of the call.
	Wall time.Duration
	// ImageBytes is how many bytes this round added to the images that
	// pre-copy holds. For a plain parent chain that is the round's image
	// size; an engine that merges each round into the previous one and
	// removes it should report the growth, not the merged size.
	ImageBytes int64
	// Dirtied is how many pages the load wrote from the round's start (its
	// soft-dirty reset) until DirtiedAfter later, counted from the page
	// tables right after the round. Zero DirtiedAfter: not counted.
	Dirtied      uint64
	DirtiedAfter time.Duration
}

// resident is the round's resident pages: what it wrote plus what it found
// unchanged in its parent.
func (r Round) resident() uint64 { return r.PagesWritten + r.PagesSkippedParent }

// copyTime is how long the round spent getting pages out of the task and
// into images: memdump (frozen) plus memwrite (thawed) in a pre-dump. A
// round without those statistics falls back on its wall time.
func (r Round) copyTime() time.Duration {
	if t := r.MemDump + r.MemWrite; t > 0 {
		return t
	}
	return r.Wall
}

// freezeOverhead is the part of the round's freeze not spent on memory:
// freezing, injecting and removing the parasite. In read mode part of
// memdump_time falls outside the freeze, so this is a lower bound.
func (r Round) freezeOverhead() time.Duration {
	return max(r.Frozen-r.MemDump, 0)
}
