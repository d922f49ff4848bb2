package imagechain

import (
	"fmt"
	"slices"
)

// pageIndex locates an ancestor's pages: its entries sorted by address,
// each present one with its offset in the pages file. The offsets are
// computed once, in file order, the way CRIU's restore advances pi_off
// (skip_pagemap_pages: only PE_PRESENT entries occupy the pages file).
type pageIndex struct {
	pagesID      uint32
	spans        []span // sorted by vaddr, not overlapping
	presentBytes int64  // what the pages file must hold
}

type span struct {
	entry
	off int64 // byte offset in the pages file; present spans only
}

func newPageIndex(img *pagemapImage, pageSize uint64) (*pageIndex, error) {
	x := &pageIndex{pagesID: img.pagesID, spans: make([]span, 0, len(img.entries))}
	var off int64
	for _, e := range img.entries {
		if e.vaddr%pageSize != 0 {
			return nil, fmt.Errorf("pagemap entry %s: not page aligned", e)
		}
		s := span{entry: e}
		if e.present() {
			s.off = off
			off += int64(e.pages * pageSize)
		}
		x.spans = append(x.spans, s)
	}
	x.presentBytes = off
	// CRIU writes entries in address order (it scans VMAs upwards); sort
	// anyway so that lookups never depend on it.
	slices.SortStableFunc(x.spans, func(a, b span) int {
		switch {
		case a.vaddr < b.vaddr:
			return -1
		case a.vaddr > b.vaddr:
			return 1
		}
		return 0
	})
	for i := 1; i < len(x.spans); i++ {
		if prev := x.spans[i-1]; prev.end(pageSize) > x.spans[i].vaddr {
			return nil, fmt.Errorf("pagemap entries %s and %s overlap", prev.entry, x.spans[i].entry)
		}
	}
	return x, nil
}

// lookup returns the span holding address vaddr.
func (x *pageIndex) lookup(vaddr, pageSize uint64) (span, bool) {
	// First span starting after vaddr; the one before it may hold vaddr.
	i, _ := slices.BinarySearchFunc(x.spans, vaddr, func(s span, v uint64) int {
		if s.vaddr <= v {
			return -1
		}
		return 1
	})
	if i == 0 {
		return span{}, false
	}
	s := x.spans[i-1]
	if vaddr >= s.end(pageSize) {
		return span{}, false
	}
	return s, true
}
