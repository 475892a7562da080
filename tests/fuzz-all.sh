#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 10s), one at a time
# (go test -fuzz accepts a single target per run). Used by `make fuzz` and `make test`.
# Minimizing a new input may take up to -fuzzminimizetime (Go default 60 s) with no
# fuzzing meanwhile: on KiB-sized inputs that starved whole runs, so it is kept short.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
fail=0 pass=0
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for t in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "fuzz $pkg $t ($fuzztime)"
		if go test -run='^$' -fuzz="^${t}\$" -fuzztime="$fuzztime" -fuzzminimizetime="${FUZZMINIMIZETIME:-2s}" "$pkg" >/tmp/obd-fuzz.$$.log 2>&1; then
			pass=$((pass + 1))
		else
			cat /tmp/obd-fuzz.$$.log
			fail=$((fail + 1))
		fi
	done
done
rm -f /tmp/obd-fuzz.$$.log
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
