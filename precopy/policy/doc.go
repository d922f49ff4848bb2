// Package policy decides, after each pre-copy round, whether another round
// of CRIU pre-dump is worth it or the container should go to its final
// dump. It is pure logic: the engine turns CRIU's dump statistics and its
// own timings into Rounds, and this package imports nothing from
// containerd or go-criu.
//
// The model. A final dump freezes the container for a fixed part that
// pre-copy cannot shrink (freezing, the parasite, dumping files, sockets,
// namespaces, network lock, tmpfs contents) plus the time to copy the pages
// dirtied since the last round reset the kernel's soft-dirty bits:
//
//	final freeze ≈ fixed + copy(dirty rate × time since the last round started)
//
// copy() is a line fitted through the rounds' memory times (a per-round
// part for walking the page map, plus pages over bandwidth), and the dirty
// rate is what the last round wrote over the time since the round before
// started: CRIU resets soft-dirty while the previous round has the task
// frozen, so everything dirtied from then on, including during that
// round's own page writing, shows up in the next round.
//
// Things the statistics do not say, which the estimators account for:
//
//   - Round 1 writes every resident page: it measures bandwidth, never a
//     dirty rate. A dirty rate needs two rounds, so after one round the
//     policy can stop only on bounds that hold whatever the load does.
//     An incremental round 1 (against the last checkpoint's image) is the
//     exception: it writes what changed since, and the engine counts the
//     soft-dirty pages right after it, which is a rate over a known time.
//   - pages_written counts distinct pages, so it saturates at the working
//     set: a long interval under-states the rate. Predictions therefore
//     never scale a measured count down to a shorter time (the count over
//     a shorter time is at most the count over the longer one), only up.
//   - pages_scanned is not the resident set: depending on the kernel it
//     counts the whole size of the mappings (Go reserves far more than it
//     touches) or only present pages. Resident pages are written + skipped.
//   - In a pre-dump, memwrite_time (writing pages out) comes after the
//     task is thawed, and memdump_time is either inside the freeze
//     (--pre-dump-mode=splice, the default: pages go into pipes) or
//     mostly after it (read: process_vm_readv). In a dump, memwrite_time
//     is nested inside memdump_time. Pre-dump copy time is their sum.
package policy
