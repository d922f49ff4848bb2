#!/usr/bin/env bash
# Prints one closing line over every tier's `go test -v` log: tests (and
# subtests) passed, failed and skipped; a package that did not build counts
# as a failure.
set -euo pipefail
pass=0 fail=0 skip=0
count() { grep -cE "$1" "$2" || true; }
for log in "$@"; do
	[ -f "$log" ] || continue
	pass=$((pass + $(count '^\s*--- PASS: ' "$log")))
	skip=$((skip + $(count '^\s*--- SKIP: ' "$log")))
	fail=$((fail + $(count '^\s*--- FAIL: ' "$log") + $(count '^FAIL\s.*\[(build|setup) failed\]' "$log")))
done
echo "summary: $pass passed, $fail failed, $skip skipped"
