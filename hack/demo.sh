#!/usr/bin/env bash
# What `make demo` runs after `make deps build`: precopy's demo program
# (integration/demo) against a private containerd it starts and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o _output/demo ./integration/demo
exec _output/demo "$@"
