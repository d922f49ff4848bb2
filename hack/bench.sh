#!/usr/bin/env bash
# What `make bench [SCENARIO=<name>]` runs after `make deps build`: the
# checkpoint benchmark (integration/bench), in the soft-dirty VM tier when
# this kernel cannot track dirty memory.
#
#   bench.sh              the full matrix: every run's row goes to
#                         _output/bench/matrix.log, then docs/benchmarks gets
#                         the CSV, the markdown table and the plots
#   bench.sh SCENARIO     one scenario; its LAST line is the summary (the
#                         storage-* scenarios always natively); a *-ext4
#                         one gets the VM's ext4 scratch disk for
#                         containerd's state and temp dirs
#                         (PRECOPY_VM_SCRATCH=ext4, integration/vm/run.sh)
#
# With BENCH_NATIVE=1 (make bench BENCH_NATIVE=1 SCENARIO=...) a scenario
# runs on this kernel even without soft-dirty: precopy's checkpoints are then
# one-shot with early thaw, which is what that figure measures.
#
# Extra arguments go to the bench (e.g. -runs 5, or -sizes 64,256 for a
# shorter matrix). Ctrl-C stops it: the VM (or, natively, the bench's
# containerd and containers) is torn down and nothing is rendered.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
	scenario=$1
	shift
fi
# The commit goes into the results (Go's own VCS stamp is missing in
# worktrees and some clones).
commit=$(git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
go build -ldflags "-X main.commit=$commit" -o _output/bench ./integration/bench

run() {
	if [ "${BENCH_NATIVE:-}" = 1 ]; then
		_output/bench -native "$@"
		return
	fi
	# The storage scenarios pre-copy nothing: they need no soft-dirty.
	if [[ $scenario == storage-* ]] || criu check --feature mem_dirty_track >/dev/null 2>&1; then
		_output/bench "$@"
		return
	fi
	if [[ $scenario == *-ext4 ]]; then export PRECOPY_VM_SCRATCH=ext4; fi
	echo "bench: this kernel cannot track dirty memory (no CONFIG_MEM_SOFT_DIRTY): running in the soft-dirty VM (qemu TCG); compare its figures only with each other" >&2
	# Room for a 1 GiB workload, its rounds, its image and the content store;
	# all of it backed before the boot (run.sh; PRECOPY_VM_PREALLOC=0: not).
	PRECOPY_VM_PREALLOC=${PRECOPY_VM_PREALLOC:-1} bash integration/vm/run.sh -m "${PRECOPY_VM_MEM:-12G}" -t "${PRECOPY_BENCH_TIMEOUT:-7200}" -- _output/bench "$@"
}

if [ -n "$scenario" ]; then
	run -scenario "$scenario" "$@"
	exit
fi
mkdir -p _output/bench.out
log=_output/bench.out/matrix.log
run -matrix "$@" | tee "$log"
_output/bench -render "$log" -out docs/benchmarks
