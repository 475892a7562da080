#!/usr/bin/env bash
# demo.sh - `make demo`: serve the bundled, reference-converted hello-world image
# (the ext4 base layer + the hello-world layer) as a block device with the best
# frontend this machine has (ublk, else FUSE + loop), mount it read-only, show what
# is inside, then detach and clean up. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it mounts a file system)" >&2; exit 1; }
OBD=${OBD:-bin/obd}
[ -x "$OBD" ] || CGO_ENABLED=0 go build -o bin/ ./cmd/...

W=$(mktemp -d /tmp/obd-demo.XXXXXX)
pid=""
cleanup() {
	mountpoint -q "$W/mnt" 2>/dev/null && umount "$W/mnt"
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$W"
}
trap cleanup EXIT

tar -xzf testdata/golden/ext4_64.tar.gz -C "$W" ext4_64
hello=$PWD/testdata/golden/hello-world-oci/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d
cat >"$W/config.v1.json" <<JSON
{"lowers": [{"file": "$W/ext4_64"}, {"file": "$hello"}], "resultFile": "$W/result"}
JSON
echo "== layers"
"$OBD" inspect --no-verify "$W/ext4_64"
"$OBD" inspect --no-verify "$hello"

echo "== attach (frontend auto: ublk if /dev/ublk-control exists, else FUSE)"
"$OBD" -q attach --foreground --run-dir "$W/run" --config "$W/config.v1.json" >"$W/attach.out" 2>"$W/attach.log" &
pid=$!
for _ in $(seq 100); do [ -s "$W/attach.out" ] && break; sleep 0.1; done
dev=$(head -1 "$W/attach.out")
[ -n "$dev" ] || { cat "$W/attach.log"; exit 1; }
echo "device: $dev ($(cat "$W/result"))"
mkdir "$W/mnt"
if [ -b "$dev" ]; then mount -o ro "$dev" "$W/mnt"; else mount -o loop,ro "$dev" "$W/mnt"; fi
echo "== mounted read-only at $W/mnt"
ls -la "$W/mnt"
echo "== /hello"
sha256sum "$W/mnt/hello"
echo "expected d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014"
"$W/mnt/hello" 2>/dev/null | head -3 || true
umount "$W/mnt"
sleep 0.3
kill -TERM "$pid"; wait "$pid"; pid=""
echo "== detached"
