#!/usr/bin/env bash
# demo.sh - `make demo`: a registry on 127.0.0.1 with the bundled hello-world OverlayBD
# image and a generated larger one; each is attached lazily with `obd attach IMAGE`
# through the best frontend (ublk, else FUSE + loop), mounted read-only and read; the
# blob bytes fetched are compared with the image size. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it mounts file systems)" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs; }
[ -x bin/obd ] || CGO_ENABLED=0 go build -o bin/ ./cmd/...
exec go run ./tests/demo
