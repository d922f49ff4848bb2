#!/usr/bin/env bash
# What `make bench SCENARIO=<name>` runs after `make deps build`: the
# checkpoint benchmark (integration/bench), in the soft-dirty VM tier when
# this kernel cannot track dirty memory. Extra arguments go to the bench
# (e.g. -runs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: bench.sh SCENARIO [bench flags]}
shift
go build -o _output/bench ./integration/bench
if criu check --feature mem_dirty_track >/dev/null 2>&1; then
	exec _output/bench -scenario "$scenario" "$@"
fi
echo "bench: this kernel cannot track dirty memory (no CONFIG_MEM_SOFT_DIRTY): running in the soft-dirty VM (qemu TCG); compare its figures only with each other"
# Room for a 1 GiB workload, its rounds, its image and the content store.
exec bash integration/vm/run.sh -m "${PRECOPY_VM_MEM:-12G}" -t 7200 -- _output/bench -scenario "$scenario" "$@"
