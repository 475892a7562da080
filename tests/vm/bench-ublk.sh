#!/usr/bin/env bash
# bench-ublk.sh - ublk throughput in a QEMU guest (tests/vm/run-in-vm.sh):
#   BenchmarkVsLoop    4 KiB random reads at QD1/QD32 and 1 MiB sequential reads of
#                      one file through /dev/ublkbN and through the kernel loop
#                      driver in the same VM; x-vs-loop = ublk / loop.
#   BenchmarkServeMode Target calls in the queue thread vs the worker pool, on a
#                      RAM target and a target whose reads take 200 µs.
# TCG numbers are noisy (±50 %): compare ratios within one run, not across runs.
#
# Usage: tests/vm/bench-ublk.sh [OPS]   (OPS = requests per measurement, default 2000)
# BENCH=REGEX picks benchmarks; OBD_UBLK_MODE=adaptive|workers|inthread the serve
# mode of BenchmarkImageVsLoop.
set -euo pipefail
cd "$(dirname "$0")/../.."
OPS=${1:-2000}
W=$(mktemp -d "${TMPDIR:-/tmp}/bench-ublk.XXXXXX")
trap 'rm -rf "$W"' EXIT
CGO_ENABLED=0 go test -c -o "$W/ublk.test" ./ublk
tests/vm/run-in-vm.sh -t 900 "$W/ublk.test" -- \
  "OBD_UBLK_MODE=${OBD_UBLK_MODE:-adaptive} ./ublk.test -test.run '^\$' -test.bench ${BENCH:-.} -test.benchtime ${OPS}x -test.count 1"
