package precopy

import (
	"encoding/binary"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestWritableRanges(t *testing.T) {
	maps := `00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/memload
00651000-00652000 rw-p 00051000 08:02 173521      /usr/bin/memload
c000000000-c004000000 rw-p 00000000 00:00 0
7f3b6c000000-7f3b7c000000 rw-p 00000000 00:00 0
7ffd1b3fe000-7ffd1b41f000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`
	got, err := writableRanges(strings.NewReader(maps))
	if err != nil {
		t.Fatal(err)
	}
	want := []addrRange{
		{0x651000, 0x652000}, {0xc000000000, 0xc004000000},
		{0x7f3b6c000000, 0x7f3b7c000000}, {0x7ffd1b3fe000, 0x7ffd1b41f000},
	}
	if !slices.Equal(got, want) {
		t.Errorf("ranges %x, want %x", got, want)
	}
	if _, err := writableRanges(strings.NewReader("zz-1 rw-p 0 0 0\n")); err == nil {
		t.Error("a bad line was accepted")
	}
}

func TestCountDirtyEntries(t *testing.T) {
	entries := []uint64{
		pagemapPresent | pagemapSoftDirty | 0x1234, // written
		pagemapPresent | 0x1235,                    // clean
		pagemapSwapped | pagemapSoftDirty,          // written, then swapped out
		pagemapSoftDirty,                           // not mapped: no page
		0,
	}
	b := make([]byte, 8*len(entries))
	for i, e := range entries {
		binary.LittleEndian.PutUint64(b[8*i:], e)
	}
	if n := countDirtyEntries(b); n != 2 {
		t.Errorf("counted %d, want 2", n)
	}
}

// On any kernel the count of this process's own pages must work; with
// CONFIG_MEM_SOFT_DIRTY every page is soft-dirty until someone clears it.
func TestCountSoftDirtySelf(t *testing.T) {
	if _, err := CountSoftDirty([]int{os.Getpid()}); err != nil {
		t.Fatal(err)
	}
}
