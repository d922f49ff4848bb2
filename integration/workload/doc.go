// Package workload is the test-side half of memload, the container process
// the checkpoint/restore tests run (integration/workloads/memload).
//
// memload holds a block of memory whose expected content is a pure function
// of (seed, cursor): seed is fixed at start and cursor counts the pages
// rewritten so far. Both live in the process's own memory, so a process
// restored by CRIU can check, with no outside help, that every page came back
// with the content it had at dump time (Memory.Verify).
//
// memload reports through a JSON status file (Status) that it rewrites
// atomically. A test asks for a verification by running `memload query`
// inside the container; it signals the workload, waits for the answer in the
// status file and prints it, so the test only has to parse stdout
// (ParseStatus).
package workload
