package imagechain

import (
	"errors"
	"fmt"
	"math"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"google.golang.org/protobuf/encoding/protowire"
)

// Pagemap entry flags, as criu/include/pagemap.h defines them. go-criu's
// generated type carries flags as a bare uint32 (the proto's "pmap.flags"
// option only names them for crit's JSON), so the values live here.
const (
	// PEParent: the pages are in the parent image dir's pagemap.
	PEParent uint32 = 1 << 0
	// PELazy: the pages may be restored lazily, through userfaultfd.
	PELazy uint32 = 1 << 1
	// PEPresent: the pages are in this dir's pages file.
	PEPresent uint32 = 1 << 2

	knownFlags = PEParent | PELazy | PEPresent
)

// wideNrPagesField is pagemap_entry.nr_pages in CRIU 4.2+ (uint64, field 5;
// commit afb2e6c3f "pagemap: change PagemapEntry.nr_pages to uint64"). Those
// versions leave the old uint32 field 2, which go-criu v7 calls NrPages, at
// zero. go-criu v7 does not know field 5, so protobuf keeps it as an unknown
// field, where this package reads and writes it.
const wideNrPagesField protowire.Number = 5

// entry is a pagemap_entry as CRIU's restore sees it after
// init_compat_pagemap_entry: explicit flags and a 64-bit page count.
type entry struct {
	vaddr uint64
	pages uint64
	flags uint32
}

func (e entry) inParent() bool { return e.flags&PEParent != 0 }
func (e entry) present() bool  { return e.flags&PEPresent != 0 }

// end is the first address after the entry.
func (e entry) end(pageSize uint64) uint64 { return e.vaddr + e.pages*pageSize }

func (e entry) String() string {
	return fmt.Sprintf("%#x+%d pages (flags %#x)", e.vaddr, e.pages, e.flags)
}

// entryFromProto decodes one pagemap entry and checks that its flags make
// sense. It reports whether the count came from the 4.2+ field.
func entryFromProto(pe *pagemap.PagemapEntry) (e entry, wide bool, err error) {
	e = entry{vaddr: pe.GetVaddr(), pages: uint64(pe.GetNrPages())}
	if n, ok, err := wideNrPages(pe); err != nil {
		return entry{}, false, err
	} else if ok {
		e.pages, wide = n, true
	}
	// Images older than the flags field mark parent holes with in_parent
	// and present pages with nothing (init_compat_pagemap_entry).
	switch {
	case pe.GetInParent():
		e.flags = pe.GetFlags() | PEParent
	case pe.Flags == nil:
		e.flags = PEPresent
	default:
		e.flags = pe.GetFlags()
	}
	switch {
	case e.pages == 0:
		return entry{}, false, fmt.Errorf("pagemap entry %s: no pages", e)
	case e.flags&^knownFlags != 0:
		return entry{}, false, fmt.Errorf("pagemap entry %s: unknown flags %#x", e, e.flags&^knownFlags)
	case e.inParent() && e.present():
		return entry{}, false, fmt.Errorf("pagemap entry %s: both PE_PARENT and PE_PRESENT", e)
	case !e.inParent() && !e.present():
		// Only a --lazy-pages dump leaves pages out of the images: the
		// lazy-pages daemon fetches them from the dump side's page server.
		return entry{}, false, fmt.Errorf("pagemap entry %s: %w", e, ErrLazyPages)
	}
	return e, wide, nil
}

// wideNrPages reads field 5 from pe's unknown fields.
func wideNrPages(pe *pagemap.PagemapEntry) (n uint64, ok bool, err error) {
	b := pe.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(b)
		if tagLen < 0 {
			return 0, false, fmt.Errorf("pagemap entry: %w", protowire.ParseError(tagLen))
		}
		b = b[tagLen:]
		if num == wideNrPagesField && typ == protowire.VarintType {
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return 0, false, fmt.Errorf("pagemap entry nr_pages: %w", protowire.ParseError(l))
			}
			n, ok, b = v, true, b[l:]
			continue
		}
		l := protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			return 0, false, fmt.Errorf("pagemap entry field %d: %w", num, protowire.ParseError(l))
		}
		b = b[l:]
	}
	return n, ok, nil
}

// toProto encodes e with explicit flags (never in_parent). The uint32 field
// gets the count whenever it fits, so CRIU before 4.2 reads it; wide also
// writes field 5, which 4.2+ prefers, as CRIU 4.2+ itself does.
func (e entry) toProto(wide bool) (*pagemap.PagemapEntry, error) {
	pe := &pagemap.PagemapEntry{Vaddr: &e.vaddr, Flags: &e.flags}
	switch {
	case e.pages <= math.MaxUint32:
		n := uint32(e.pages)
		pe.NrPages = &n
	case !wide:
		return nil, errors.New("pagemap entry " + e.String() + ": too many pages for this image format")
	default:
		var zero uint32
		pe.NrPages = &zero
	}
	if wide {
		b := protowire.AppendTag(nil, wideNrPagesField, protowire.VarintType)
		pe.ProtoReflect().SetUnknown(protowire.AppendVarint(b, e.pages))
	}
	return pe, nil
}

// appendMerged appends e to es, extending the last entry instead when e
// continues it with the same flags. CRIU's restore walks entries and VMAs
// independently (restore_priv_vma_content, uffd collect_iovs split entries
// at VMA ends), and CRIU's own page pipes merge neighbours across VMAs, so
// merged entries restore the same. Counts stay within maxPages.
func appendMerged(es []entry, e entry, pageSize, maxPages uint64) []entry {
	if n := len(es); n > 0 {
		last := &es[n-1]
		if last.flags == e.flags && last.end(pageSize) == e.vaddr && last.pages+e.pages <= maxPages {
			last.pages += e.pages
			return es
		}
	}
	return append(es, e)
}
