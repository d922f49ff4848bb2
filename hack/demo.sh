#!/usr/bin/env bash
# What `make demo` runs after `make deps build`: precopy's demo program
# (integration/demo) against a private containerd it starts and removes.
# Pre-copy needs a kernel that tracks dirty memory; where this one cannot,
# the demo runs in the soft-dirty VM tier instead.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o _output/demo ./integration/demo
if criu check --feature mem_dirty_track >/dev/null 2>&1; then
	exec _output/demo "$@"
fi
echo "demo: this kernel cannot track dirty memory (no CONFIG_MEM_SOFT_DIRTY); running in the soft-dirty VM (qemu TCG: several times slower than native)"
exec bash integration/vm/run.sh -- _output/demo "$@"
