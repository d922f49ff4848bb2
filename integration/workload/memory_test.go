package workload

import (
	"slices"
	"testing"
)

const testPages = 64

func newTestMemory(t *testing.T, seed uint64, hot float64) *Memory {
	t.Helper()
	m, err := NewMemory(make([]byte, testPages*PageSize), seed, hot)
	if err != nil {
		t.Fatal(err)
	}
	m.Fill()
	return m
}

func TestNewMemoryRejectsBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		hot  float64
	}{
		{"empty", 0, 0.5},
		{"partial page", PageSize + 1, 0.5},
		{"hot zero", PageSize, 0},
		{"hot above one", PageSize, 1.5},
	} {
		if _, err := NewMemory(make([]byte, tc.size), 1, tc.hot); err == nil {
			t.Errorf("%s: NewMemory accepted size %d hot %v", tc.name, tc.size, tc.hot)
		}
	}
}

func TestHotPages(t *testing.T) {
	for _, tc := range []struct {
		pages uint64
		hot   float64
		want  uint64
	}{
		{64, 0.1, 7}, // ceil(6.4)
		{64, 1, 64},
		{64, 0.001, 1}, // never empty
		{16384, 0.1, 1639},
	} {
		if got := HotPages(tc.pages, tc.hot); got != tc.want {
			t.Errorf("HotPages(%d, %v) = %d, want %d", tc.pages, tc.hot, got, tc.want)
		}
	}
}

func TestFreshMemoryVerifies(t *testing.T) {
	m := newTestMemory(t, 1, 0.1)
	if bad := m.Verify(); len(bad) != 0 {
		t.Fatalf("fresh memory has bad pages %v", bad)
	}
}

func TestVerifiesAfterRewrites(t *testing.T) {
	m := newTestMemory(t, 42, 0.25) // 16 hot pages
	// Uneven steps wrap the hot set mid-step and many times over.
	for _, k := range []uint64{1, 3, 15, 16, 17, 100, 0, 1000} {
		m.Rewrite(k)
		if bad := m.Verify(); len(bad) != 0 {
			t.Fatalf("after rewriting %d pages (cursor %d): bad pages %v", k, m.Cursor(), bad)
		}
	}
	if m.Cursor() != 1152 {
		t.Fatalf("cursor = %d, want 1152", m.Cursor())
	}
}

func TestEpochFollowsCursor(t *testing.T) {
	m := newTestMemory(t, 1, 0.25) // 16 hot pages
	m.Rewrite(16*3 + 5)
	for p, want := range map[uint64]uint64{0: 4, 4: 4, 5: 3, 15: 3, 16: 0, 63: 0} {
		if got := m.Epoch(p); got != want {
			t.Errorf("Epoch(%d) = %d, want %d", p, got, want)
		}
	}
}

func TestRewriteChangesOnlyTheHotSet(t *testing.T) {
	m := newTestMemory(t, 7, 0.25)
	before := slices.Clone(m.buf)
	m.Rewrite(m.HotPages())
	for p := uint64(0); p < m.Pages(); p++ {
		changed := !slices.Equal(before[p*PageSize:(p+1)*PageSize], m.page(p))
		if hot := p < m.HotPages(); changed != hot {
			t.Errorf("page %d: changed = %v, hot = %v", p, changed, hot)
		}
	}
}

func TestCorruptedPageIsTheOnlyBadOne(t *testing.T) {
	m := newTestMemory(t, 3, 0.5)
	m.Rewrite(50)
	m.buf[37*PageSize+1234] ^= 0x01
	if bad := m.Verify(); !slices.Equal(bad, []uint64{37}) {
		t.Fatalf("bad pages = %v, want [37]", bad)
	}
}

// A page that missed its latest rewrite, as after a lost dirty-page update
// in an incremental dump, must be caught.
func TestStalePageIsBad(t *testing.T) {
	m := newTestMemory(t, 3, 0.5)
	m.Rewrite(5)
	stale := slices.Clone(m.page(5))
	m.Rewrite(1) // rewrites page 5
	copy(m.page(5), stale)
	if bad := m.Verify(); !slices.Equal(bad, []uint64{5}) {
		t.Fatalf("bad pages = %v, want [5]", bad)
	}
}

func TestZeroedMemoryIsAllBad(t *testing.T) {
	m := newTestMemory(t, 0, 1)
	clear(m.buf)
	if bad := m.Verify(); len(bad) != testPages {
		t.Fatalf("%d bad pages in zeroed memory, want %d", len(bad), testPages)
	}
}

// What a restored process has: its bytes, its seed and its cursor. A new
// Memory over a copy must verify, and must not with a wrong cursor or seed.
func TestCopyVerifiesInANewProcess(t *testing.T) {
	orig := newTestMemory(t, 99, 0.3)
	orig.Rewrite(1234)

	restore := func(seed, cursor uint64) *Memory {
		m, err := NewMemory(slices.Clone(orig.buf), seed, 0.3)
		if err != nil {
			t.Fatal(err)
		}
		m.SetCursor(cursor)
		return m
	}
	m := restore(99, orig.Cursor())
	if bad := m.Verify(); len(bad) != 0 {
		t.Fatalf("copy has bad pages %v", bad)
	}
	if m.Checksum() != orig.Checksum() {
		t.Fatalf("copy checksum %08x, original %08x", m.Checksum(), orig.Checksum())
	}
	// The copy carries on exactly as the original would.
	m.Rewrite(77)
	orig.Rewrite(77)
	if !slices.Equal(m.buf, orig.buf) {
		t.Fatal("copy and original diverged after the same rewrites")
	}
	if bad := restore(99, orig.Cursor()-1).Verify(); len(bad) != 1 {
		t.Errorf("cursor one behind: %d bad pages, want 1", len(bad))
	}
	if bad := restore(98, orig.Cursor()).Verify(); len(bad) != testPages {
		t.Errorf("wrong seed: %d bad pages, want %d", len(bad), testPages)
	}
}

func TestChecksumSeesEveryByte(t *testing.T) {
	m := newTestMemory(t, 5, 1)
	sum := m.Checksum()
	m.buf[len(m.buf)-1] ^= 0x80
	if m.Checksum() == sum {
		t.Fatal("checksum did not change with the last byte")
	}
}

func BenchmarkVerify(b *testing.B) {
	m, err := NewMemory(make([]byte, 64<<20), 1, 0.1)
	if err != nil {
		b.Fatal(err)
	}
	m.Fill()
	b.SetBytes(int64(len(m.buf)))
	for b.Loop() {
		if bad := m.Verify(); len(bad) != 0 {
			b.Fatal(bad)
		}
	}
}

func BenchmarkChecksum(b *testing.B) {
	m, err := NewMemory(make([]byte, 64<<20), 1, 0.1)
	if err != nil {
		b.Fatal(err)
	}
	m.Fill()
	b.SetBytes(int64(len(m.buf)))
	for b.Loop() {
		m.Checksum()
	}
}
