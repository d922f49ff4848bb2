# precopy: see README.md. `make demo` and `make test` set everything up.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := build

OUT      := $(CURDIR)/_output
BIN      := $(OUT)/bin
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo unknown)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
# The shim prints containerd's version for -v unless told its own.
LDFLAGS  := -X github.com/containerd/containerd/v2/version.Version=$(VERSION) \
            -X github.com/containerd/containerd/v2/version.Revision=$(REVISION)
PREFIX   ?= /usr/local

# Integration tests to run (a go test -run pattern) in each tier.
RUN      ?= .
VM_RUN   ?= $(RUN)
TEST_TIMEOUT ?= 30m
# The VM tier runs the same tests under TCG, several times slower.
VM_TEST_TIMEOUT ?= 50m

export PRECOPY_BIN_DIR := $(BIN)
# Integration tests fail, not skip, when the stack is missing.
export PRECOPY_REQUIRE_STACK := 1

# `make bench` measures the full matrix into docs/benchmarks;
# `make bench SCENARIO=<name>` one scenario (see integration/bench); a
# *-ext4 scenario runs with containerd's dirs on the VM's ext4 scratch disk.
SCENARIO ?=
# Extra bench flags, e.g. BENCH_FLAGS='-runs 5' or '-sizes 64,256'.
BENCH_FLAGS ?=

# Go fuzz targets (package:target:inputs), each run by `make fuzz` for its
# count of inputs (about 5 s each here), or for FUZZTIME if set: `make test`
# runs them briefly, `make fuzz FUZZTIME=10m` explores. A count, not a
# duration, by default: Go before 1.27 can fail a duration-bound run with a
# bare "context deadline exceeded" as the time runs out, with no failing
# input (golang/go#75804; FuzzFlatten so failed in CI on f47a13a, go1.26.8).
# A failing input is saved under the package's testdata/fuzz.
FUZZTIME ?=
FUZZ_TARGETS := ./precopy/imagechain:FuzzDecodePagemap:150000x ./precopy/imagechain:FuzzFlatten:1200x \
                ./plugin/contentservice:FuzzDecodeWriteRequest:12000x

.PHONY: build deps install test test-unit fuzz test-integration test-vm demo demo-precopyd bench clean

build:
	mkdir -p $(BIN)
	CGO_ENABLED=0 go build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...
	CGO_ENABLED=0 go build -o $(BIN)/ ./integration/workloads/memload ./integration/workloads/pause ./integration/workloads/netload

deps:
	bash hack/deps.sh

install: build
	install -m 0755 $(BIN)/containerd-shim-precopy-v1 $(BIN)/precopyctl $(PREFIX)/bin/

# Every tier: unit tests, integration tests on this kernel, and the
# integration tests again in the soft-dirty VM.
test: deps build
	rm -f $(OUT)/test-*.log
	# The shell runs with -e: the summary must come after a failing tier
	# too, and -k runs the other tiers.
	rc=0; $(MAKE) --no-print-directory -k test-unit test-integration test-vm || rc=$$?; \
		bash hack/test-summary.sh $(OUT)/test-*.log; exit $$rc

test-unit:
	mkdir -p $(OUT)
	go test -count=1 -v $$(go list ./... | grep -v '/integration$$') 2>&1 | tee $(OUT)/test-unit.log
	$(MAKE) --no-print-directory fuzz

# FuzzFlatten writes image dirs: on tmpfs (as precopy's rounds are) it runs
# about twice as many inputs as on disk.
fuzz:
	mkdir -p $(OUT)
	if [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi; \
	for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*} target=$${t#*:}; inputs=$${target#*:} target=$${target%%:*}; \
		go test -v -run '^$$' -fuzz "^$$target$$" -fuzztime $(or $(FUZZTIME),$$inputs) "$$pkg/" || exit 1; \
	done 2>&1 | tee $(OUT)/test-fuzz.log

test-integration: build
	go test -count=1 -v -timeout $(TEST_TIMEOUT) -run '$(RUN)' ./integration/ 2>&1 | tee $(OUT)/test-integration.log

# PRECOPY_VM_SCRATCH=ext4 make test-vm: the harness's containerd dirs on an
# ext4 disk instead of tmpfs (integration/vm/run.sh).
test-vm: build
	go test -c -o $(OUT)/integration.test ./integration/
	bash integration/vm/run.sh -t 3300 -- $(OUT)/integration.test -test.v -test.count=1 \
		-test.timeout $(VM_TEST_TIMEOUT) -test.run '$(VM_RUN)' 2>&1 | tee $(OUT)/test-vm.log
	go test -c -o $(OUT)/imagechain.test ./precopy/imagechain/
	bash integration/vm/run.sh -t 2400 -- $(OUT)/imagechain.test -test.v -test.count=1 \
		-test.timeout $(TEST_TIMEOUT) 2>&1 | tee $(OUT)/test-vm-imagechain.log

demo: deps build
	bash hack/demo.sh

# The demo on precopyd's memory-backed content store and snapshotter.
demo-precopyd: deps build
	bash hack/demo.sh -precopyd

# Measures; never part of make test.
bench: deps build
	bash hack/bench.sh $(SCENARIO) $(BENCH_FLAGS)

clean:
	rm -rf $(OUT)
