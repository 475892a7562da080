#!/usr/bin/env bash
# e2e.sh - every real-kernel suite, one VM at a time (TCG uses every core).
# The last line is "N passed, N failed" summed over the suites.
set -uo pipefail
cd "$(dirname "$0")/.."
tp=0 tf=0
for suite in tests/vm/ublk-suite.sh tests/vm/obd-suite.sh; do
	echo "=== $suite"
	out=$(mktemp)
	"$suite" 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -1)
	p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
	if [ -z "$line" ]; then p=0; f=1; fi
	if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
	tp=$((tp + p)); tf=$((tf + f))
	rm -f "$out"
done
echo "e2e: $tp passed, $tf failed"
[ "$tf" -eq 0 ]
