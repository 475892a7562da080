#!/usr/bin/env bash
# bench-ublk.sh - ublk throughput in a QEMU guest (tests/vm/run-in-vm.sh):
#   BenchmarkVsLoop      4 KiB random reads at QD1/QD32 and 1 MiB sequential reads of
#                        one file through /dev/ublkbN and through the kernel loop
#                        driver in the same VM; x-vs-loop = ublk / loop.
#   BenchmarkImageVsLoop the same for a sealed local LSMT image and a ZFile LZ4 one,
#                        per read path, each measured right after loop in every run:
#                        pread (the Target's ReadAt), ring (file reads on the queue's
#                        ring; without zero copy, requests under 64 KiB only if their
#                        files are on ext4/xfs/btrfs, see BENCH_FS) and, on
#                        kernels with AUTO_BUF_REG, zc (zero copy) and zc-unlinked
#                        (zero copy, each tag committed after its reads' CQEs
#                        instead of chained to them: what the link buys): PATH-x-vs-loop,
#                        and the serving CPU per request, PATH-cpu-us/op for 4 KiB
#                        reads and PATH-cpu-ms/MiB sequentially (process CPU minus
#                        the load thread's; issue 13's CPU per I/O), and
#                        PATH-enters/op, the queue threads' io_uring_enter calls
#                        per request (ring round trips; reads on the ring are
#                        linked to their completion, so one round trip each).
#   BenchmarkServeMode   Target calls in the queue thread vs the worker pool, on a
#                        RAM target and a target whose reads take 200 µs.
# TCG numbers are noisy (±50 %): compare ratios within one run, not across runs.
# Each benchmark runs COUNT times (default 5); the summary gives each metric's
# median and its spread (min-max).
#
# Usage: tests/vm/bench-ublk.sh [OPS]   (OPS = requests per measurement, default 2000)
# BENCH=REGEX picks benchmarks; COUNT=N repeats; OBD_UBLK_MODE=adaptive|workers|inthread
# the serve mode of BenchmarkImageVsLoop; UBLKVM_SUITE=unstable runs on Debian
# unstable's kernel (7.2, zero copy) instead of 6.12 (make bench-ublk-unstable).
# BENCH_FS=ext4 puts the image files on an ext4 file system (over a loop device
# in the guest) instead of the guest's tmpfs /tmp, whose files 6.12's io_uring
# cannot read without blocking (every ring read goes to an io-wq worker);
# OBD_BENCH_PATHS=pread,ring,zc limits the read paths measured; PROFILE=DIR
# writes a CPU profile of the run to DIR/cpu.prof (with DIR/ublk.test for pprof).
set -euo pipefail
cd "$(dirname "$0")/../.."
OPS=${1:-2000}
COUNT=${COUNT:-5}
W=$(mktemp -d "${TMPDIR:-/tmp}/bench-ublk.XXXXXX")
trap 'rm -rf "$W"' EXIT
CGO_ENABLED=0 go test -c -o "$W/ublk.test" ./ublk
VMARGS=() SETUP= PROF=
if [ "${BENCH_FS:-}" = ext4 ]; then
  VMARGS+=(-b "$(command -v mkfs.ext4)")
  SETUP="dd if=/dev/zero of=/tmp/fs.img bs=1M count=0 seek=700 2>/dev/null && $(command -v mkfs.ext4) -q /tmp/fs.img && mkdir -p /mnt/fs && mount -o loop /tmp/fs.img /mnt/fs && export OBD_BENCH_DIR=/mnt/fs;"
fi
if [ -n "${PROFILE:-}" ]; then
  mkdir -p "$PROFILE" && cp "$W/ublk.test" "$PROFILE/"
  VMARGS+=(-s "$(cd "$PROFILE" && pwd)")
  PROF="-test.cpuprofile /share/cpu.prof"
fi
tests/vm/run-in-vm.sh -t 3000 "${VMARGS[@]}" "$W/ublk.test" -- \
  "$SETUP export OBD_UBLK_MODE=${OBD_UBLK_MODE:-adaptive} OBD_BENCH_PATHS=${OBD_BENCH_PATHS:-}; uname -r; ./ublk.test -test.run '^\$' -test.bench '${BENCH:-.}' -test.benchtime ${OPS}x -test.count ${COUNT} $PROF" |
  tee "$W/out.txt"
echo
echo "summary: median [min-max] of ${COUNT} runs"
awk '/^Benchmark/ {
  name = $1; sub(/-[0-9]+$/, "", name)
  if (!(name in seen)) { seen[name] = 1; order[++nn] = name }
  for (i = 3; i + 1 <= NF; i += 2) {
    key = name SUBSEP $(i + 1)
    if (!(key in cnt)) { units[name] = units[name] " " $(i + 1) }
    vals[key, ++cnt[key]] = $i
  }
}
END {
  for (k = 1; k <= nn; k++) {
    name = order[k]; line = name ":"
    m = split(substr(units[name], 2), us, " ")
    for (j = 1; j <= m; j++) {
      u = us[j]; key = name SUBSEP u; n = cnt[key]
      if (u == "ns/op") continue
      delete a
      for (i = 1; i <= n; i++) a[i] = vals[key, i] + 0
      for (i = 2; i <= n; i++) { v = a[i]; for (x = i - 1; x >= 1 && a[x] > v; x--) a[x + 1] = a[x]; a[x + 1] = v }
      med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
      line = line sprintf("  %s %.4g [%.4g-%.4g]", u, med, a[1], a[n])
    }
    print line
  }
}' "$W/out.txt"
