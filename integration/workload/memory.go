package workload

import (
	"fmt"
	"hash/crc32"
	"math"
)

// Memory is a block of pages whose expected content is a pure function of
// (seed, cursor). The first HotPages pages form the hot set, which Rewrite
// walks cyclically; the rest are written once by Fill and never again.
//
// Memory does not own its buffer: memload hands it an mmap'd region, tests a
// plain slice, and a "restored" view is just the same bytes with the same
// seed and cursor (SetCursor).
type Memory struct {
	buf      []byte
	seed     uint64
	pages    uint64
	hotPages uint64
	// cursor counts every page rewrite since Fill at cursor 0; page p of the
	// hot set has been rewritten Epoch(p) times.
	cursor uint64
}

// NewMemory wraps buf, whose length must be a positive multiple of
// PageSize. hot, in (0, 1], is the fraction of pages that Rewrite touches.
// The buffer is not written: call Fill to initialise it, or SetCursor to
// adopt content written by another Memory with the same seed and hot set.
func NewMemory(buf []byte, seed uint64, hot float64) (*Memory, error) {
	if len(buf) == 0 || len(buf)%PageSize != 0 {
		return nil, fmt.Errorf("memory size %d is not a positive multiple of %d", len(buf), PageSize)
	}
	if !(hot > 0 && hot <= 1) {
		return nil, fmt.Errorf("hot fraction %v is not in (0, 1]", hot)
	}
	pages := uint64(len(buf) / PageSize)
	return &Memory{buf: buf, seed: seed, pages: pages, hotPages: HotPages(pages, hot)}, nil
}

// HotPages is the size of the hot set: ceil(hot*pages), at least one page so
// that a positive rewrite rate always has somewhere to go.
func HotPages(pages uint64, hot float64) uint64 {
	h := uint64(math.Ceil(hot * float64(pages)))
	return min(max(h, 1), pages)
}

// Pages is the number of pages in the memory.
func (m *Memory) Pages() uint64 { return m.pages }

// HotPages is the number of pages Rewrite cycles through.
func (m *Memory) HotPages() uint64 { return m.hotPages }

// Seed is the seed the content derives from.
func (m *Memory) Seed() uint64 { return m.seed }

// Cursor is the number of page rewrites so far.
func (m *Memory) Cursor() uint64 { return m.cursor }

// SetCursor declares how many rewrites the buffer has seen, without touching
// it. That is all a fresh Memory over copied bytes needs to verify them.
func (m *Memory) SetCursor(cursor uint64) { m.cursor = cursor }

// Epoch is how many times page p has been rewritten at the current cursor:
// each full pass over the hot set rewrites every hot page once, and the
// current partial pass has already reached pages below cursor%H.
func (m *Memory) Epoch(p uint64) uint64 {
	if p >= m.hotPages {
		return 0
	}
	epoch := m.cursor / m.hotPages
	if p < m.cursor%m.hotPages {
		epoch++
	}
	return epoch
}

func (m *Memory) page(p uint64) []byte {
	return m.buf[p*PageSize : (p+1)*PageSize]
}

func (m *Memory) key(p uint64) uint64 {
	return pageKey(m.seed, p, m.Epoch(p))
}

// Fill writes the expected content for the current cursor into every page.
func (m *Memory) Fill() {
	for p := uint64(0); p < m.pages; p++ {
		fillPage(m.page(p), m.key(p))
	}
}

// Rewrite rewrites the next k pages of the hot set, wrapping around as many
// times as k requires, and advances the cursor by k.
func (m *Memory) Rewrite(k uint64) {
	for range k {
		p := m.cursor % m.hotPages
		m.cursor++
		// After the increment, Epoch(p) counts this rewrite.
		fillPage(m.page(p), m.key(p))
	}
}

// Verify returns the pages whose content differs from what the current cursor
// predicts, in increasing order; none means the memory is intact.
func (m *Memory) Verify() []uint64 {
	var bad []uint64
	for p := uint64(0); p < m.pages; p++ {
		if !pageMatches(m.page(p), m.key(p)) {
			bad = append(bad, p)
		}
	}
	return bad
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC-32C of the whole memory (hardware-accelerated on amd64
// and arm64). It lets a test compare the bytes before a dump and after a
// restore when the cursor has not moved, independently of Verify.
func (m *Memory) Checksum() uint32 {
	return crc32.Checksum(m.buf, castagnoli)
}
