#!/usr/bin/env bash
# `obd zfile -x` against a C baseline of the reference's codec (tests/bench/lz4x.c:
# liblz4's LZ4_decompress_safe + hardware CRC32C, single-threaded, as
# overlaybd-zfile -x decodes) on the same LZ4 ZFile of realistic content (a tar
# of /usr, cut to SIZE_MIB); and `obd zfile` (LZ4, 4 KiB blocks, CRCs) with 1 and 2
# workers against a C baseline of overlaybd-zfile's compressor (lz4x -c: liblz4's
# LZ4_compress_default + hardware CRC32C, single-threaded, the reference's
# per-block reads and writes; lz4x -cb: the same with 1 MiB reads and writes), its
# output compared byte for byte with obd's.
# `make bench-zfile` runs it; it is not part of `make test`.
#
# Prints, for RUNS interleaved runs, the median wall and CPU time (user + sys)
# and the spread of each command, and the ratios obd / C (for compression, the
# ratio of each round's pair, median and spread); then the codec alone
# (MB of output per CPU second, obd's codec (pierrec/lz4's decoder, zfile's LZ4
# compressor) vs liblz4 on the same blocks).
# The machine's other load inflates wall times: compare the CPU columns too.
#
# Environment: SIZE_MIB (512; 128 for a quick look), RUNS (5), BENCH_DIR (a temporary directory,
# removed afterwards), GO (go). Input and outputs live in /dev/shm when it has room,
# so that the disk (obd syncs its outputs, the C baseline does not unless -s)
# does not decide the times.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE_MIB=${SIZE_MIB:-512}
RUNS=${RUNS:-5}
GO=${GO:-go}

need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
[ -e /usr/include/lz4.h ] || need+=(liblz4-dev)
if [ ${#need[@]} -gt 0 ]; then
	echo "installing ${need[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null ||
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
fi

dir=${BENCH_DIR:-}
if [ -z "$dir" ]; then
	tmp=
	if [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')" -gt $((SIZE_MIB * 4 * 1024)) ] 2>/dev/null; then
		tmp=/dev/shm
	fi
	dir=$(mktemp -d ${tmp:+-p $tmp})
	trap 'rm -rf "$dir"' EXIT
fi
mkdir -p "$dir"
CGO_ENABLED=0 $GO build -trimpath -o "$dir/obd" ./cmd/obd
gcc -O2 -Wall -msse4.2 -o "$dir/lz4x" tests/bench/lz4x.c -llz4

in=$dir/usr.tar
if [ ! -s "$in" ]; then
	# Realistic content: binaries, libraries, text; a second pass if /usr is small.
	{ tar cf - -C / usr 2>/dev/null || true; tar cf - -C / usr 2>/dev/null || true; } |
		head -c $((SIZE_MIB << 20)) >"$in"
fi
zf=$dir/usr.zfile
rm -f "$zf"
"$dir/obd" zfile "$in" "$zf" 2>/dev/null
echo "input: $(($(stat -c %s "$in") >> 20)) MiB of /usr as tar, ZFile LZ4 4 KiB blocks: $(($(stat -c %s "$zf") >> 20)) MiB"

# timeit NAME CMD...: appends "wall cpu" to $dir/NAME.t
timeit() {
	local name=$1
	shift
	local TIMEFORMAT='%R %U %S'
	{ time "$@" >/dev/null 2>&1; } 2>&1 | awk '{printf "%.3f %.3f\n", $1, $2 + $3}' >>"$dir/$name.t"
}
rm -f "$dir"/*.t
for ((i = 1; i <= RUNS; i++)); do
	rm -f "$dir/obd.out" "$dir/c.out"
	timeit obd-file "$dir/obd" zfile -x "$zf" "$dir/obd.out"
	timeit c-file "$dir/lz4x" "$zf" "$dir/c.out"
	timeit c-file-fsync "$dir/lz4x" -s "$zf" "$dir/c.out"
	timeit obd-null sh -c "'$dir/obd' zfile -x '$zf' - >/dev/null"
	timeit c-null sh -c "'$dir/lz4x' '$zf' - >/dev/null"
	timeit obd-null-1cpu env GOMAXPROCS=1 sh -c "'$dir/obd' zfile -x '$zf' - >/dev/null"
	rm -f "$dir/z1" "$dir/z2" "$dir/zc" "$dir/zcb"
	timeit compress-1worker env GOMAXPROCS=1 "$dir/obd" zfile "$in" "$dir/z1"
	timeit c-compress "$dir/lz4x" -c "$in" "$dir/zc"
	timeit compress-2workers env GOMAXPROCS=2 "$dir/obd" zfile "$in" "$dir/z2"
	timeit c-compress-1MiB "$dir/lz4x" -cb "$in" "$dir/zcb"
done
# Same bytes: the C baseline does the same work as obd.
cmp "$dir/obd.out" "$in" && cmp "$dir/c.out" "$in" && cmp "$dir/z1" "$zf" && cmp "$dir/z2" "$zf" &&
	cmp "$dir/zc" "$zf" && cmp "$dir/zcb" "$zf"

# median COLUMN NAME: the median of column 1 (wall) or 2 (cpu)
median() { sort -n -k"$1" "$dir/$2.t" | awk -v c="$1" '{v[NR]=$c} END {print v[int((NR+1)/2)]}'; }
spread() { sort -n -k"$1" "$dir/$2.t" | awk -v c="$1" 'NR==1{lo=$c} {hi=$c} END {printf "%s-%s", lo, hi}'; }
printf "\n%-20s %8s %14s %8s %14s   (seconds, median of %d)\n" command wall spread cpu spread "$RUNS"
for n in obd-file c-file c-file-fsync obd-null c-null obd-null-1cpu compress-1worker compress-2workers c-compress c-compress-1MiB; do
	printf "%-20s %8s %14s %8s %14s\n" "$n" "$(median 1 $n)" "$(spread 1 $n)" "$(median 2 $n)" "$(spread 2 $n)"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo
echo "zfile -x obd / C, to a file (obd fsyncs it): wall $(ratio "$(median 1 obd-file)" "$(median 1 c-file)")," \
	"vs C + fsync: wall $(ratio "$(median 1 obd-file)" "$(median 1 c-file-fsync)")"
echo "zfile -x obd / C, to /dev/null: wall $(ratio "$(median 1 obd-null)" "$(median 1 c-null)"), cpu $(ratio "$(median 2 obd-null)" "$(median 2 c-null)")"
# paired COLUMN A B: A / B of each run (A and B timed in the same round, next
# to each other), as "median [min-max]".
paired() {
	paste "$dir/$2.t" "$dir/$3.t" | awk -v c="$1" '{print $c / $(c + 2)}' | sort -n |
		awk '{v[NR]=$1} END {printf "%.2f [%.2f-%.2f]", v[int((NR+1)/2)], v[1], v[NR]}'
}
echo
echo "compression, LZ4 4 KiB + CRC, ratios of the same round (median [min-max] of $RUNS):"
printf "  %-34s %-20s %s\n" "" wall cpu
for pair in "compress-1worker c-compress obd 1 worker / C" "compress-2workers c-compress obd 2 workers / C (target <= 0.5)" \
	"compress-2workers compress-1worker obd 2 workers / 1 worker" \
	"compress-1worker c-compress-1MiB obd 1 worker / C with 1 MiB I/O" \
	"compress-2workers c-compress-1MiB obd 2 workers / C with 1 MiB I/O"; do
	set -- $pair
	a=$1 b=$2
	shift 2
	printf "  %-34s %-20s %s\n" "$*" "$(paired 1 $a $b)" "$(paired 2 $a $b)"
done
# On 2 idle cores this is near 2; lower means other load, not obd, set the wall times.
echo "  CPUs obd 2 workers had (cpu / wall): $(awk '{print $2 / $1}' "$dir/compress-2workers.t" | sort -n |
	awk '{v[NR]=$1} END {printf "%.2f [%.2f-%.2f]", v[int((NR+1)/2)], v[1], v[NR]}')"

echo
echo "codec alone, MB of output per CPU second (same blocks):"
echo "  liblz4:       $("$dir/lz4x" -n "$zf" | tr '\n' ' ')"
echo "  obd:          $(ZFILE_BENCH_FILE=$zf $GO test -run='^$' -bench=BenchmarkCodecFile -benchtime=3x ./zfile |
	awk '/^BenchmarkCodecFile/ {for (i = 7; i < NF; i += 2) printf "%s %s  ", $(i+1), $i}')"
