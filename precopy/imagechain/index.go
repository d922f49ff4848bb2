package imagechain

import (
	"fmt"
	"math"
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

// newPageIndex checks img's entries against each other and the page size,
// with arithmetic that cannot overflow (counts come from the image: CRIU
// 4.2+ stores them in 64 bits), and indexes them. Every entry must be page
// aligned and end at or below 2^64, the present ones together must fit a
// file, and no two may overlap.
func newPageIndex(img *pagemapImage, pageSize uint64) (*pageIndex, error) {
	x := &pageIndex{pagesID: img.pagesID, spans: make([]span, 0, len(img.entries))}
	var off, total int64 // present bytes; bytes of all entries
	for i, e := range img.entries {
		n, ok := mulPages(e.pages, pageSize)
		switch {
		case e.vaddr%pageSize != 0:
			return nil, fmt.Errorf("pagemap entry %d %s: %w: not page aligned", i+1, e, ErrCorruptImage)
		case !ok:
			return nil, fmt.Errorf("pagemap entry %d %s: %w: more bytes than a file can hold", i+1, e, ErrCorruptImage)
		case uint64(n) > math.MaxUint64-e.vaddr:
			return nil, fmt.Errorf("pagemap entry %d %s: %w: ends beyond the address space", i+1, e, ErrCorruptImage)
		case n > math.MaxInt64-total:
			return nil, fmt.Errorf("pagemap entry %d %s: %w: the entries add up to more than a file can hold", i+1, e, ErrCorruptImage)
		}
		total += n
		s := span{entry: e}
		if e.present() {
			s.off = off
			off += n // <= total
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
			return nil, fmt.Errorf("pagemap entries %s and %s: %w: they overlap", prev.entry, x.spans[i].entry, ErrCorruptImage)
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

// next returns the address of the first span starting after vaddr, or the
// top of the address space if there is none.
func (x *pageIndex) next(vaddr uint64) uint64 {
	i, _ := slices.BinarySearchFunc(x.spans, vaddr, func(s span, v uint64) int {
		if s.vaddr <= v {
			return -1
		}
		return 1
	})
	if i == len(x.spans) {
		return math.MaxUint64
	}
	return x.spans[i].vaddr
}
