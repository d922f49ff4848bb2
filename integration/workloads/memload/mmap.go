package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// allocate maps anonymous private memory outside the Go heap: the garbage
// collector never scans or moves it, so the process's memory is this region
// plus a small, quiet heap, and CRIU sees it as one plain anonymous VMA. It
// is never unmapped; it lives as long as the process.
//
// The region lies between two inaccessible guard pages so that it stays a
// VMA of its own. Without them the kernel merges the Go runtime's own
// anonymous mappings, which mmap places right next to the region, into the
// region's VMA, and a VMA that grows is soft-dirty as a whole (mmap_region
// and vma_merge set VM_SOFTDIRTY on the expanded VMA, mm/mmap.c): every page
// of the region then looks rewritten to the next pre-dump, which copies it
// all again. Seen in the soft-dirty VM: 1 GiB checkpoints whose first round
// found all but a few pages dirty after the runtime mapped a few MiB.
func allocate(size int) ([]byte, error) {
	page := unix.Getpagesize()
	all, err := unix.Mmap(-1, 0, size+2*page, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", size, err)
	}
	b := all[page : page+size : page+size]
	if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		unix.Munmap(all)
		return nil, fmt.Errorf("mprotect %d bytes read-write: %w", size, err)
	}
	return b, nil
}
