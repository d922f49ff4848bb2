package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// vma is one line of /proc/self/maps.
type vma struct {
	start, end uintptr
	perms      string
}

func selfMaps(t *testing.T) []vma {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []vma
	s := bufio.NewScanner(f)
	for s.Scan() {
		var v vma
		if _, err := fmt.Sscanf(s.Text(), "%x-%x %s", &v.start, &v.end, &v.perms); err != nil {
			t.Fatalf("%q: %v", s.Text(), err)
		}
		out = append(out, v)
	}
	return out
}

// TestRegionStaysItsOwnVMA: the region is exactly one VMA between two
// inaccessible ones, and stays so when read-write anonymous memory is
// mapped right next to those guards (where the kernel would otherwise
// merge it into the region's VMA, making all of it soft-dirty).
func TestRegionStaysItsOwnVMA(t *testing.T) {
	const size = 8 << 20
	b, err := allocate(size)
	if err != nil {
		t.Fatal(err)
	}
	start := uintptr(unsafe.Pointer(&b[0]))
	end := start + size
	check := func(when string) (below, above vma) {
		t.Helper()
		maps := selfMaps(t)
		for i, v := range maps {
			if v.start > start || v.end <= start {
				continue
			}
			if v.start != start || v.end != end || !strings.HasPrefix(v.perms, "rw") {
				t.Fatalf("%s: the region %x-%x is in VMA %x-%x %s, not a VMA of its own", when, start, end, v.start, v.end, v.perms)
			}
			if i == 0 || i == len(maps)-1 || maps[i-1].end != start || maps[i+1].start != end ||
				maps[i-1].perms[:3] != "---" || maps[i+1].perms[:3] != "---" {
				t.Fatalf("%s: the region %x-%x is not between two inaccessible VMAs: %v", when, start, end, maps)
			}
			return maps[i-1], maps[i+1]
		}
		t.Fatalf("%s: no VMA holds the region %x-%x", when, start, end)
		return
	}
	below, above := check("after allocate")

	// Read-write anonymous mappings right below the lower guard and right
	// above the upper one, where the space is free.
	const n = 1 << 20
	for _, at := range []uintptr{below.start - n, above.end} {
		// x/sys's Mmap takes no address; MmapPtr wants an unsafe.Pointer
		// made from an integer, which vet rightly rejects.
		p, _, errno := unix.Syscall6(unix.SYS_MMAP, at, n, unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uintptr(0), 0)
		if errno != 0 {
			t.Logf("mmap at %x: %v (taken)", at, errno)
			continue
		}
		t.Cleanup(func() { unix.Syscall(unix.SYS_MUNMAP, p, n, 0) })
	}
	check("after mappings next to the guards")
}
