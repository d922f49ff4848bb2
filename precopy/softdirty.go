package precopy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Bits of a /proc/<pid>/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const (
	pagemapSoftDirty = 1 << 55
	pagemapSwapped   = 1 << 62
	pagemapPresent   = 1 << 63
)

// CountSoftDirty counts the pages of processes pids whose soft-dirty bit
// is set: the pages they wrote since CRIU last reset the bits, at the start
// of the last pre-dump round. CRIU's statistics only say what a round
// copied; this says, right after round 1, how much the load rewrote
// during it, which is how the policy can tell after one round that a load
// will not converge. It reads /proc/<pid>/maps and pagemap (root, or the
// processes' owner, may); go-criu has no reader for live pagemaps.
func CountSoftDirty(pids []int) (uint64, error) {
	var total uint64
	for _, pid := range pids {
		n, err := countProcessSoftDirty(pid)
		if err != nil {
			return 0, fmt.Errorf("soft-dirty pages of %d: %w", pid, err)
		}
		total += n
	}
	return total, nil
}

func countProcessSoftDirty(pid int) (uint64, error) {
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, err
	}
	defer maps.Close()
	ranges, err := writableRanges(maps)
	if err != nil {
		return 0, err
	}
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return 0, err
	}
	defer pagemap.Close()
	page := uint64(os.Getpagesize())
	buf := make([]byte, 8*4096)
	var n uint64
	for _, r := range ranges {
		for off, end := int64(r.start/page*8), int64(r.end/page*8); off < end; {
			chunk := buf[:min(int64(len(buf)), end-off)]
			got, err := pagemap.ReadAt(chunk, off)
			n += countDirtyEntries(chunk[:got])
			if err != nil {
				// The mapping went away between maps and pagemap.
				break
			}
			off += int64(got)
		}
	}
	return n, nil
}

// countDirtyEntries counts the pagemap entries in b (little-endian u64s)
// that are soft-dirty and present or swapped.
func countDirtyEntries(b []byte) uint64 {
	var n uint64
	for i := 0; i+8 <= len(b); i += 8 {
		e := binary.LittleEndian.Uint64(b[i:])
		if e&pagemapSoftDirty != 0 && e&(pagemapPresent|pagemapSwapped) != 0 {
			n++
		}
	}
	return n
}

type addrRange struct{ start, end uint64 }

// writableRanges lists the writable mappings of a /proc/<pid>/maps: only
// they can be dirtied. [vsyscall] is not in the page tables.
func writableRanges(r io.Reader) ([]addrRange, error) {
	var out []addrRange
	s := bufio.NewScanner(r)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 2 || len(fields[1]) < 2 || fields[1][1] != 'w' {
			continue
		}
		if len(fields) >= 6 && fields[5] == "[vsyscall]" {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			return nil, fmt.Errorf("maps line %q", s.Text())
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end < start {
			return nil, fmt.Errorf("maps line %q", s.Text())
		}
		out = append(out, addrRange{start, end})
	}
	return out, s.Err()
}
