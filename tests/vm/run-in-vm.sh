#!/usr/bin/env bash
# run-in-vm.sh - run a shell command inside a throw-away QEMU (TCG) guest whose
# Debian kernel has the ublk driver (ublk_drv) loaded, and return its exit code.
# obd's real-kernel tests (tests/vm/ublk-suite.sh, bench-ublk.sh) run through it;
# it needs no KVM and no ublk on the host, and works unattended in CI (root, no stdin).
#
# Usage:
#   run-in-vm.sh [options] [PATH...] -- 'guest shell command'
#
#   PATH...        files or directories copied into the guest's /work (by
#                  basename, directories recursively). The command runs with
#                  cwd=/work and PATH=/work/bin:/work:/usr/sbin:/usr/bin:/sbin:/bin.
# Options:
#   -b BIN         also copy host binary BIN (e.g. /sbin/mkfs.ext4) and the shared
#                  libraries ldd lists for it into the guest at the same paths
#                  (repeatable)
#   -s DIR         share host directory DIR read-write at /share via virtio-9p
#   -m MIB         guest memory in MiB (default 2048; /tmp in the guest is tmpfs)
#   -c N           guest vCPUs (default: host nproc, at most 4)
#   -t SECS        wall-clock timeout for the whole VM (default 1200); exit 124
#   -v             also print the guest kernel console (ttyS0) to stderr
#   -q             no harness chatter on stderr
#   -h             help
# Environment:
#   UBLKVM_CACHE   cache dir for kernel/initramfs (default /var/cache/ublkvm, and
#                  /var/cache/ublkvm/SUITE for a suite other than the default)
#   UBLKVM_SUITE   Debian suite to take linux-image-amd64 from (default
#                  bookworm-backports = 6.12.x; tested: trixie 6.12, unstable 7.2)
#   UBLKVM_KPKG    exact kernel package name to use instead of the suite's
#                  linux-image-amd64 dependency (e.g. linux-image-6.12.95+deb12-amd64)
#   UBLKVM_EXTRA_MODULES  extra module names to load in the guest
#   UBLKVM_MIRROR  Debian mirror URI (default: the first .../debian URI of this
#                  machine's own apt sources; no mirror is hard-coded here)
#   UBLKVM_PARALLEL=1  do not wait for other VMs: by default one VM runs at a
#                  time per cache dir, since TCG saturates every host core
#
# Exit status: the guest command's exit status; 124 on timeout; 125 when the VM
# died without reporting one (kernel panic, harness failure).
#
# First run (needs root): apt-get installs qemu-system-x86, busybox-static,
# cpio, xz-utils, zstd, kmod, file; downloads the kernel .deb(s) (~110 MB) with a
# private apt config (the system's sources.list is not changed) and builds a
# base initramfs (busybox + ublk_drv, loop, virtio_blk, ext4, 9p, overlay modules).
# Later runs reuse the cache: ~7 s for a trivial guest command on 2 cores (TCG).
#
# Example:
#   CGO_ENABLED=0 go test -c -o /tmp/pkg.test ./pkg/ublk
#   run-in-vm.sh -b /sbin/mkfs.ext4 /tmp/pkg.test -- './pkg.test -test.v'
#
# Guest notes: busybox sh runs the command; its applets shadow same-named host
# binaries copied with -b (call /usr/bin/dd etc. by full path); /dev/ublk-control
# exists, /dev/ublkcN and /dev/ublkbN appear via devtmpfs (no udev).
set -euo pipefail

die() { echo "run-in-vm: $*" >&2; exit 125; }
log() { [ -n "${QUIET:-}" ] || echo "run-in-vm: $*" >&2; }

MEM=2048
NCPU=$(nproc 2>/dev/null || echo 1); [ "$NCPU" -gt 4 ] && NCPU=4
TIMEOUT=1200
VERBOSE=
SHARE=
BINS=()
PATHS=()
CMD=

while [ $# -gt 0 ]; do
  case "$1" in
    -b) BINS+=("$2"); shift 2 ;;
    -s) SHARE=$(readlink -f "$2"); shift 2 ;;
    -m) MEM=$2; shift 2 ;;
    -c) NCPU=$2; shift 2 ;;
    -t) TIMEOUT=$2; shift 2 ;;
    -v) VERBOSE=1; shift ;;
    -q) QUIET=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
    --) shift; CMD="$*"; break ;;
    -*) die "unknown option $1 (see -h)" ;;
    *) PATHS+=("$1"); shift ;;
  esac
done
[ -n "$CMD" ] || die "no guest command given (usage: run-in-vm.sh [opts] [PATH...] -- 'cmd')"

CACHE=${UBLKVM_CACHE:-/var/cache/ublkvm}
SUITE=${UBLKVM_SUITE:-bookworm-backports}
# Another suite's kernel gets its own cache (kernel.ready is per cache dir), but
# VMs of every suite still take turns on the same run lock.
RUNLOCK=$CACHE/.run.lock
[ -z "${UBLKVM_CACHE:-}" ] && [ "$SUITE" != bookworm-backports ] && CACHE=$CACHE/$SUITE
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo

# ---------------------------------------------------------------- host tools
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
# (no grep -q on pipes: with pipefail an early-exiting grep makes the pipe "fail")
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x insmod >/dev/null && file -L /bin/busybox 2>/dev/null | grep static >/dev/null || need_pkgs+=(busybox-static)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v depmod >/dev/null || need_pkgs+=(kmod)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v file >/dev/null || need_pkgs+=(file)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need_pkgs+=(debian-archive-keyring)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
[ -f /usr/share/qemu/bios-256k.bin ] || [ -f /usr/share/seabios/bios-256k.bin ] || {
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends seabios >/dev/null; }

# ------------------------------------------------------ kernel + base initramfs
$SUDO mkdir -p "$CACHE"; $SUDO chown "$(id -u)" "$CACHE"
exec 9>"$CACHE/.lock"; flock 9   # serialise cache building between parallel runs

APTD=$CACHE/apt
APTO=(-o Dir::Etc::SourceList="$APTD/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::State::Lists="$APTD/lists" -o Dir::Cache="$APTD/cache"
      -o APT::Architecture=amd64 -o APT::Architectures=amd64 -o Debug::NoLocking=1
      -o APT::Sandbox::User=root)
if [ ! -f "$CACHE/kernel.ready" ]; then
  rm -rf "$APTD" "$CACHE/kroot"; mkdir -p "$APTD/lists/partial" "$APTD/cache/archives/partial" "$CACHE/kroot"
  # use the Debian mirror this machine's own apt is configured with (deb822 or one-line form)
  MIRROR=${UBLKVM_MIRROR:-$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
           sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n' | grep -E '/debian/?$' | head -1)}
  [ -n "$MIRROR" ] || MIRROR=$(grep -hE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
           sed -E 's/\[[^]]*\][[:space:]]*//' | awk '{print $2}' | grep -E '/debian/?$' | head -1)
  [ -n "$MIRROR" ] || die "no Debian mirror found in this machine's apt sources (set UBLKVM_MIRROR)"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" > "$APTD/sources.list"
  log "apt update ($SUITE)"
  apt-get "${APTO[@]}" update -qq >/dev/null || die "apt update for $SUITE failed"
  KPKG=${UBLKVM_KPKG:-}
  if [ -z "$KPKG" ]; then
    KPKG=$(apt-cache "${APTO[@]}" show "linux-image-amd64/$SUITE" 2>/dev/null | sed -n 's/^Depends: //p' | head -1 |
           tr ',' '\n' | sed 's/^ *//; s/ .*//' | { grep '^linux-image-' || true; } | head -1)
    [ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 in $SUITE"
  fi
  # newer Debian kernels split the image into linux-{binary,modules,base}-VER packages
  PKGS="$KPKG $(apt-cache "${APTO[@]}" show "$KPKG" 2>/dev/null | sed -n 's/^Depends: //p' | head -1 |
         tr ',' '\n' | sed 's/^ *//; s/ .*//' | { grep -E '^linux-(binary|modules|base)-' || true; } | tr '\n' ' ')"
  log "downloading $PKGS"
  (cd "$APTD" && apt-get "${APTO[@]}" download $PKGS 2>&1 | grep -v -e unsandboxed -e '^Get:' -e '^Fetched' >&2 || true)
  ls "$APTD"/linux-*.deb >/dev/null 2>&1 || die "kernel download failed"
  for deb in "$APTD"/linux-*.deb; do dpkg-deb -x "$deb" "$CACHE/kroot"; rm -f "$deb"; done
  echo "$KPKG" > "$CACHE/kernel.pkg"
  touch "$CACHE/kernel.ready"; rm -f "$CACHE/base.ready"
fi
MODROOT=$CACHE/kroot/lib/modules; [ -d "$MODROOT" ] || MODROOT=$CACHE/kroot/usr/lib/modules
KVER=$(ls "$MODROOT" 2>/dev/null | head -1); [ -n "$KVER" ] || die "no modules in kernel package"
# Debian <= trixie: /boot/{vmlinuz,config}-VER; newer: /usr/lib/modules/VER/{vmlinuz,config}
VMLINUZ=$CACHE/kroot/boot/vmlinuz-$KVER; [ -f "$VMLINUZ" ] || VMLINUZ=$MODROOT/$KVER/vmlinuz
KCONFIG=$CACHE/kroot/boot/config-$KVER; [ -f "$KCONFIG" ] || KCONFIG=$MODROOT/$KVER/config
[ -f "$VMLINUZ" ] || die "no kernel image for $KVER"
grep -q '^CONFIG_BLK_DEV_UBLK=[ym]' "$KCONFIG" || die "kernel $KVER has no CONFIG_BLK_DEV_UBLK"

BASE=$CACHE/base-initrd.cpio
MODS="ublk_drv loop virtio_blk crc32c_generic crc32c-intel ext4 9pnet_virtio 9p overlay ${UBLKVM_EXTRA_MODULES:-}"
if [ ! -f "$CACHE/base.ready" ] || [ "$(cat "$CACHE/base.mods" 2>/dev/null)" != "$MODS" ]; then
  log "building base initramfs for $KVER"
  # depmod -b wants BASE/lib/modules; give it a view that works for /usr/lib/modules too
  DMB=$CACHE/depmod-base; rm -rf "$DMB"; mkdir -p "$DMB/lib"; ln -s "$MODROOT" "$DMB/lib/modules"
  depmod -b "$DMB" "$KVER"
  R=$CACHE/rootfs; rm -rf "$R"; mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,work,share,lib/modules,usr/bin,usr/sbin}
  cp /bin/busybox "$R/bin/busybox"
  for a in $("$R/bin/busybox" --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
  MD=$MODROOT/$KVER
  order=()
  addmod() { # $1 = path relative to $MD, resolve deps depth-first
    local m=$1 d deps
    for d in "${order[@]}"; do [ "$d" = "$m" ] && return 0; done
    deps=$(awk -F': *' -v m="$m" '$1==m {print $2}' "$MD/modules.dep")
    # modules.dep lists deps so that the last one must load first
    for d in $(echo $deps | tr ' ' '\n' | tac); do addmod "$d"; done
    order+=("$m")
  }
  for n in $MODS; do
    p=$(awk -F: -v n="$n" '{f=$1; sub(".*/","",f); sub(/\.ko(\.[a-z]+)?$/,"",f); gsub("-","_",f); nn=n; gsub("-","_",nn); if (f==nn) {print $1; exit}}' "$MD/modules.dep")
    if [ -z "$p" ]; then
      grep -q "/$n.ko" "$MD/modules.builtin" 2>/dev/null || log "module $n: not in this kernel (skipped)"
      continue
    fi
    addmod "$p"
  done
  : > "$R/etc/modules"
  for m in "${order[@]}"; do
    b=$(basename "$m"); b=${b%.xz}; b=${b%.zst}; b=${b%.gz}
    case "$m" in
      *.xz) xz -dc "$MD/$m" > "$R/lib/modules/$b" ;;
      *.zst) zstd -qdc "$MD/$m" > "$R/lib/modules/$b" ;;
      *.gz) gzip -dc "$MD/$m" > "$R/lib/modules/$b" ;;
      *) cp "$MD/$m" "$R/lib/modules/$b" ;;
    esac
    echo "$b" >> "$R/etc/modules"
  done
  cat > "$R/init" <<'EOF'
#!/bin/sh
export PATH=/work/bin:/work:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp; mount -t tmpfs tmpfs /run
[ -d /sys/kernel/debug ] && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ln -sf /proc/self/fd /dev/fd; ln -sf /proc/self/fd/0 /dev/stdin; ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
hostname ublkvm
for m in $(cat /etc/modules); do insmod /lib/modules/$m || echo "init: insmod $m failed" > /dev/ttyS0; done
if grep -q ' ublkvm_share=1' /proc/cmdline; then
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,access=any share /share || echo "init: 9p mount failed" > /dev/ttyS0
fi
# /dev/hvc0: guest command output; /dev/hvc1: exit status channel
read up _ < /proc/uptime
echo "init: userspace reached at uptime ${up}s" > /dev/ttyS0
cd /work
rc=0
/bin/sh /etc/guest-cmd < /dev/null > /dev/hvc0 2>&1 || rc=$?
echo "rc=$rc" > /dev/hvc1
sync
poweroff -f
EOF
  chmod +x "$R/init"
  (cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$BASE.tmp"
  mv "$BASE.tmp" "$BASE"; echo "$MODS" > "$CACHE/base.mods"; touch "$CACHE/base.ready"
fi
flock -u 9

# --------------------------------------------------------- per-run overlay
W=$(mktemp -d "${TMPDIR:-/tmp}/ublkvm.XXXXXX")
QPID=
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
O=$W/root; mkdir -p "$O/work" "$O/etc"
for p in "${PATHS[@]}"; do
  [ -e "$p" ] || die "no such file: $p"
  cp -a "$(readlink -f "$p")" "$O/work/$(basename "$p")"
done
for b in "${BINS[@]}"; do
  bp=$(command -v "$b" || true); [ -n "$bp" ] || die "no such binary: $b"
  bp=$(readlink -f "$bp")
  for f in "$bp" $(ldd "$bp" 2>/dev/null | grep -o '/[^ ]*' || true); do
    [ -e "$f" ] || continue
    mkdir -p "$O$(dirname "$f")"; cp -L "$f" "$O$f"
    # also at the path ldd/the binary names (e.g. /lib64/ld-linux-x86-64.so.2)
  done
  [ "$bp" = "$b" ] || { mkdir -p "$O$(dirname "$b")"; cp -L "$bp" "$O$b" 2>/dev/null || true; }
done
[ -e "$O/lib/x86_64-linux-gnu" ] && { mkdir -p "$O/lib64"; [ -e /lib64/ld-linux-x86-64.so.2 ] && cp -L /lib64/ld-linux-x86-64.so.2 "$O/lib64/"; }
printf '%s\n' "$CMD" > "$O/etc/guest-cmd"
(cd "$O" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$W/overlay.cpio"
cat "$BASE" "$W/overlay.cpio" > "$W/initrd.cpio"

# ------------------------------------------------------------------- boot
if [ "${UBLKVM_PARALLEL:-}" != 1 ]; then
  exec 8>"$RUNLOCK"
  flock -n 8 || { log "waiting for another VM to finish"; flock 8; }
fi
# QEMU's multi-threaded TCG has been seen to abort in its own MSI-X emulation
# (msix_table_mmio_write assertion, rc 134) while the guest boots, under heavy host
# load. A run that aborted before the guest wrote any output ran nothing of the
# command, so it is booted once more; any later failure is reported as is.
for attempt in 1 2; do
  : > "$W/out"; : > "$W/rc"; : > "$W/console"
  APPEND="console=ttyS0 rdinit=/init panic=-1 quiet loglevel=4 mitigations=off nokaslr tsc=reliable"
  SHAREARGS=()
  if [ -n "$SHARE" ]; then
    APPEND="$APPEND ublkvm_share=1"
    SHAREARGS=(-fsdev "local,id=fs0,path=$SHARE,security_model=none" -device virtio-9p-pci,fsdev=fs0,mount_tag=share)
  fi
  t0=$(date +%s.%N)
  timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
    -machine q35 -accel tcg,thread=multi -cpu max -smp "$NCPU" -m "$MEM" \
    -kernel "$VMLINUZ" -initrd "$W/initrd.cpio" -append "$APPEND" \
    -serial "file:$W/console" \
    -device virtio-serial-pci,id=vs0 \
    -chardev "file,id=out,path=$W/out" -device virtconsole,chardev=out,bus=vs0.0 \
    -chardev "file,id=rc,path=$W/rc" -device virtconsole,chardev=rc,bus=vs0.0 \
    "${SHAREARGS[@]}" </dev/null &
  QPID=$!
  tail -n +1 -s 0.2 -f --pid=$QPID "$W/out" &
  TPID=$!
  VPID=
  [ -n "$VERBOSE" ] && { tail -n +1 -s 0.2 -f --pid=$QPID "$W/console" >&2 & VPID=$!; }
  qrc=0; wait "$QPID" || qrc=$?
  QPID=
  wait "$TPID" 2>/dev/null || true
  [ -n "$VPID" ] && { wait "$VPID" 2>/dev/null || true; }
  if [ "$qrc" = 134 ] && [ ! -s "$W/out" ] && [ ! -s "$W/rc" ] && [ "$attempt" = 1 ]; then
    log "qemu aborted (rc 134) before the guest ran anything; booting again"
    tail -n 5 "$W/console" >&2
    continue
  fi
  break
done
t1=$(date +%s.%N)
up=$(sed -n 's/.*userspace reached at uptime \([0-9.]*\)s.*/\1/p' "$W/console" | head -1)
rc=$(sed -n 's/^rc=\([0-9]*\).*/\1/p' "$W/rc" | tail -1)
log "kernel $KVER; guest /init at ${up:-?}s guest uptime; VM wall $(awk "BEGIN{printf \"%.1f\", $t1-$t0}")s"
if [ -z "$rc" ]; then
  echo "run-in-vm: guest reported no exit status (qemu rc=$qrc); last console lines:" >&2
  tail -n 40 "$W/console" >&2
  [ "$qrc" = 124 ] || [ "$qrc" = 137 ] && { echo "run-in-vm: timed out after ${TIMEOUT}s" >&2; exit 124; }
  exit 125
fi
exit "$rc"
