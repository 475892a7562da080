#!/usr/bin/env bash
# ublk-suite.sh - run the ublk package's tests against a real ublk driver in a
# QEMU guest (tests/vm/run-in-vm.sh). The host kernel needs no ublk or KVM.
#
# Usage: tests/vm/ublk-suite.sh [-run REGEX] [-race] [-v]
#   -race  build with the race detector (needs cgo: the binary and its libc go
#          into the guest through run-in-vm.sh -b)
# The last line is "N passed, N failed"; the exit status is non-zero on any
# failure, on a skipped test (everything must run in the guest) or a VM error.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=.
RACE=
VMARGS=(-q)
while [ $# -gt 0 ]; do
  case "$1" in
    -run) RUN=$2; shift 2 ;;
    -race) RACE=1; shift ;;
    -v) VMARGS=(-v); shift ;;
    *) echo "usage: $0 [-run REGEX] [-race] [-v]" >&2; exit 2 ;;
  esac
done
command -v mkfs.ext4 >/dev/null || {
  apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs >/dev/null; }
MKFS=$(command -v mkfs.ext4)

# Not under /tmp: -b keeps host paths, and the guest mounts a tmpfs on /tmp.
W=$(mktemp -d /var/tmp/ublk-suite.XXXXXX)
trap 'rm -rf "$W"' EXIT
if [ -n "$RACE" ]; then
  CGO_ENABLED=1 go test -race -c -o "$W/ublk.test" ./ublk
else
  CGO_ENABLED=0 go test -c -o "$W/ublk.test" ./ublk
fi

rc=0
tests/vm/run-in-vm.sh "${VMARGS[@]}" -t 900 -b "$MKFS" -b "$W/ublk.test" -- \
  "$W/ublk.test -test.v -test.count=1 -test.timeout=600s -test.run '$RUN'" 2>&1 | tee "$W/out" || rc=$?
# (with pipefail, rc is run-in-vm.sh's status: tee itself does not fail)

passed=$(grep -c '^--- PASS' "$W/out" || true)
failed=$(grep -c '^--- FAIL' "$W/out" || true)
skipped=$(grep -c '^--- SKIP' "$W/out" || true)
if [ "$skipped" -gt 0 ]; then
  echo "ublk-suite: $skipped test(s) skipped inside the VM; counted as failures"
  failed=$((failed + skipped))
fi
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "ublk-suite: VM run failed with status $rc"
  failed=$((failed + 1))
fi
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
  echo "ublk-suite: no test ran"
  failed=1
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
