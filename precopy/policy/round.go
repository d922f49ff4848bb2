package policy

import "time"

// PageSize is the size of the pages CRIU counts (x86-64, arm64 with 4 KiB
// pages): byte sizes and page counts convert through it.
const PageSize = 4096

// Round is one CRIU dump: a pre-dump round, or a checkpoint's final dump
// (the report's final). Its statistics are CRIU's (stats-dump in its work
// dir); the engine adds its own measurements. The JSON names are those of
// precopy's report.
type Round struct {
	// Index is 1 for the first round; 0 for a final dump.
	Index int `json:"index"`
	// PagesScanned is pages_scanned. It is not the resident set (see the
	// package doc) and the policy does not rely on it.
	PagesScanned uint64 `json:"pages_scanned"`
	// PagesWritten is pages_written: the distinct pages copied this round.
	// Round 1 copies every resident page; later rounds only those dirtied
	// since the previous round reset soft-dirty.
	PagesWritten uint64 `json:"pages_written"`
	// PagesSkippedParent is pages_skipped_parent: resident pages left out
	// because the parent round holds them unchanged.
	PagesSkippedParent uint64 `json:"pages_skipped_parent"`
	// Freezing is freezing_time: how long freezing the task took. Frozen
	// is frozen_time: how long it then stayed frozen. Their sum is the
	// dump's freeze (Freeze), what the app perceives of it.
	Freezing time.Duration `json:"freezing_ns"`
	Frozen   time.Duration `json:"frozen_ns"`
	// MemDump is memdump_time: in a pre-dump, collecting the pages, with
	// the task frozen in splice mode, after the thaw in read mode.
	MemDump time.Duration `json:"memdump_ns"`
	// MemWrite is memwrite_time: in a pre-dump, writing the collected pages
	// out after the task is thawed; in a dump, writing them while frozen,
	// a part of memdump_time (CRIU's __parasite_dump_pages_seized writes
	// before it stops that timer).
	MemWrite time.Duration `json:"memwrite_ns"`
	// Start is when the round's runc/CRIU call began. Optional: when zero,
	// rounds are taken to run back to back and Wall stands in for the time
	// between two starts (which misses any work between rounds).
	Start time.Time `json:"start"`
	// Wall is the round's duration from the start to the end of the call.
	Wall time.Duration `json:"wall_ns"`
	// ImageBytes is how many bytes this round added to the images that
	// pre-copy holds. For a plain parent chain that is the round's image
	// size; an engine that flattens each round into one image set and
	// removes the previous one reports the growth, not the flat size (the
	// round's own size until it is flattened: the policy decides on that
	// when the flattens wait for the final dump). For a final
	// dump: the size of the checkpoint's flat image.
	ImageBytes int64 `json:"image_bytes"`
	// Flatten is what making this round stand alone cost, while the
	// container ran (but see FlattenAfterDump). The policy does not read
	// it.
	Flatten time.Duration `json:"flatten_ns"`
	// FlattenAfterDump: the round's flatten ran after the final dump
	// (outside the freeze when the container ran again right after it)
	// rather than before the next dump on it.
	FlattenAfterDump bool `json:"flatten_after_final_dump,omitempty"`
	// FlattenTakenOver and FlattenCopied are the pages of the previous
	// image the round's flatten took over (its pages file became the
	// round's, the round's own pages written into it) and copied;
	// FlattenCopyReason is why it copied instead (imagechain's
	// TakeoverRefused), one reason per pagemap. For a final dump: its
	// flatten with the rounds' image (the report's FinalFlatten). The
	// policy does not read them.
	FlattenTakenOver  uint64 `json:"flatten_taken_over_pages,omitempty"`
	FlattenCopied     uint64 `json:"flatten_copied_pages,omitempty"`
	FlattenCopyReason string `json:"flatten_copy_reason,omitempty"`
	// FlattenRangeShifts is how many ranges the takeover inserted into or
	// collapsed out of the previous pages file (ext4, XFS) because pages
	// were added or removed below others since (imagechain's
	// RangeShifts).
	FlattenRangeShifts int `json:"flatten_range_shifts,omitempty"`
	// Dirtied is how many pages the load wrote from the round's start (its
	// soft-dirty reset) until DirtiedAfter later, counted from the page
	// tables right after the round. Zero DirtiedAfter: not counted.
	Dirtied      uint64        `json:"dirtied_pages,omitempty"`
	DirtiedAfter time.Duration `json:"dirtied_after_ns,omitempty"`
}

// Freeze is the dump's freeze as the app perceives it: freezing the task
// plus keeping it frozen.
func (r Round) Freeze() time.Duration { return r.Freezing + r.Frozen }

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
