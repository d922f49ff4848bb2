// Command firsttouch measures what this machine charges for the first
// touch of memory: it maps anonymous memory, writes one byte per page
// (the kernel allocates and zeroes each page then), and writes them all
// again (no allocation). On a host that gives freed memory back to its own
// host (a VM with free page reporting), the first pass pays for getting
// the memory back, page by page; integration/vm/run.sh's
// PRECOPY_VM_PREALLOC exists for that.
//
//	go run ./hack/firsttouch -gib 2 [-huge]
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	gib := flag.Int("gib", 1, "GiB to map and touch")
	huge := flag.Bool("huge", false, "ask for transparent huge pages (MADV_HUGEPAGE)")
	flag.Parse()
	n := *gib << 30
	m, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Fprintln(os.Stderr, "firsttouch:", err)
		os.Exit(1)
	}
	if *huge {
		if err := unix.Madvise(m, unix.MADV_HUGEPAGE); err != nil {
			fmt.Fprintln(os.Stderr, "firsttouch:", err)
			os.Exit(1)
		}
	}
	page := os.Getpagesize()
	touch := func(v byte) time.Duration {
		start := time.Now()
		for off := 0; off < n; off += page {
			m[off] = v
		}
		return time.Since(start)
	}
	first, again := touch(1), touch(2)
	pages := n / page
	fmt.Printf("firsttouch: %d GiB (huge pages asked: %v): first touch %.2f s (%.1f us a page), again %.2f s (%.2f us a page)\n",
		*gib, *huge, first.Seconds(), float64(first.Microseconds())/float64(pages), again.Seconds(), float64(again.Microseconds())/float64(pages))
}
