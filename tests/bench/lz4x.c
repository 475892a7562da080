// lz4x: the C baseline for `obd zfile -x` and `obd zfile` (tests/bench/zfile-x.sh
// builds it; not part of make test). It decompresses an LZ4 ZFile the way the
// reference's codec does: single-threaded, liblz4's LZ4_decompress_safe per block
// plus the salted CRC32C (SSE4.2 crc32 instruction), the output written in 1 MiB
// pieces; and compresses as overlaybd-zfile does (-c).
//
//   lz4x IN OUT      decompress IN into OUT (OUT "-" is stdout)
//   lz4x -s IN OUT   the same, then fsync OUT (as obd does before renaming its output)
//   lz4x -c IN OUT   compress IN into an LZ4 ZFile OUT (4 KiB blocks, CRCs), as
//                    overlaybd-zfile does: single-threaded, per block one pread of
//                    the block, LZ4_compress_default, one write of the compressed
//                    block, one write of its CRC; then the jump table and the
//                    trailer. The header keeps its initial flags (no overwrite).
//   lz4x -cb IN OUT  the same bytes with 1 MiB reads and writes (the reference's
//                    codec with the fewest syscalls: a lower bound for it)
//   lz4x -n IN       decode only: IN read into memory first, then every block decoded
//                    (and its CRC checked) three times; prints MB of output per
//                    CPU second (best of three, robust to load from other processes)
//                    for decode alone, for decode + CRC, and for compressing the
//                    decoded blocks again with LZ4_compress_default (the reference's
//                    compressor) + CRC.
//
// Format: docs/overlaybd-format.md §4 (512-byte header/trailer, jump table of u32
// block lengths including the 4-byte CRC, blocks from offset 512).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <nmmintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HDR 512
#define SALT 100007u

static void die(const char *msg) {
	fprintf(stderr, "lz4x: %s: %s\n", msg, errno ? strerror(errno) : "bad input");
	exit(1);
}

static uint64_t le64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t le32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static uint32_t crc32c(uint32_t crc, const unsigned char *p, size_t n) {
	uint64_t c = crc;
	for (; n >= 8; n -= 8, p += 8) c = _mm_crc32_u64(c, le64(p));
	crc = (uint32_t)c;
	for (; n > 0; n--, p++) crc = _mm_crc32_u8(crc, *p);
	return crc;
}

static void preadall(int fd, void *buf, size_t n, off_t off) {
	while (n > 0) {
		ssize_t k = pread(fd, buf, n, off);
		if (k <= 0) die("pread");
		buf = (char *)buf + k; n -= k; off += k;
	}
}

static void writeall(int fd, const void *buf, size_t n) {
	while (n > 0) {
		ssize_t k = write(fd, buf, n);
		if (k <= 0) die("write");
		buf = (const char *)buf + k; n -= k;
	}
}

struct zf {
	uint64_t blocks, orig, bs;
	int verify;
	uint32_t *lens;
};

// open_zf reads the jump table: the header's record if it carries the index
// (flag bit 3), else the trailer's.
static void open_zf(int fd, struct zf *z) {
	struct stat st;
	unsigned char rec[HDR];
	if (fstat(fd, &st) < 0) die("stat");
	preadall(fd, rec, HDR, 0);
	if (memcmp(rec, "ZFile", 5) != 0) die("not a ZFile");
	if (!(le64(rec + 32) & 8)) preadall(fd, rec, HDR, st.st_size - HDR);
	uint64_t ioff = le64(rec + 40);
	z->blocks = le64(rec + 48);
	z->orig = le64(rec + 56);
	z->bs = le32(rec + 72);
	z->verify = rec[88] != 0;
	if (rec[76] != 1) die("not LZ4");
	if (z->blocks > (uint64_t)st.st_size / 4) die("index size");
	z->lens = malloc(z->blocks * 4 + 1);
	preadall(fd, z->lens, z->blocks * 4, ioff);
}

static int decode(const struct zf *z, const unsigned char *src, uint32_t len, char *dst, int blen, int check) {
	int dlen = len;
	if (z->verify) {
		dlen -= 4;
		if (check && crc32c(SALT, src, dlen) != le32(src + dlen)) return -1;
	}
	return LZ4_decompress_safe((const char *)src, dst, dlen, blen) == blen ? 0 : -1;
}

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

// record fills a 512-byte header (flags 0x13) or trailer (0x16): magic, the
// 96-byte struct's fields, the rest zero, and the digest (raw CRC32C of all
// 512 bytes with the digest field zero).
static void record(unsigned char *r, uint64_t flags, uint64_t ioff, uint64_t nblocks,
                   uint64_t orig, uint32_t icrc, uint32_t bs) {
	static const unsigned char magic[24] = {'Z', 'F', 'i', 'l', 'e', 0, 1, 0, 't', 'u', 'j', 'i',
	                                        '.', 'y', 'y', 'f', '@', 'A', 'l', 'i', 'b', 'a', 'b', 'a'};
	memset(r, 0, HDR);
	memcpy(r, magic, sizeof magic);
	put32(r + 24, 96);
	put64(r + 32, flags);
	put64(r + 40, ioff);
	put64(r + 48, nblocks);
	put64(r + 56, orig);
	put32(r + 64, icrc);
	put32(r + 72, bs);
	r[76] = 1; // LZ4
	r[88] = 1; // verify: per-block CRCs
	put32(r + 28, crc32c(0, r, HDR));
}

// out_buf collects output for -cb; with cap 0 every put is one write.
struct out_buf {
	int fd;
	unsigned char *p;
	size_t n, cap;
};

static void put(struct out_buf *o, const void *p, size_t n) {
	if (o->cap == 0) {
		writeall(o->fd, p, n);
		return;
	}
	if (o->n + n > o->cap) {
		writeall(o->fd, o->p, o->n);
		o->n = 0;
	}
	memcpy(o->p + o->n, p, n);
	o->n += n;
}

static int compress_file(const char *in, const char *outname, int buffered) {
	const uint32_t bs = 4096;
	int fd = open(in, O_RDONLY);
	if (fd < 0) die("open input");
	struct stat st;
	if (fstat(fd, &st) < 0) die("stat input");
	uint64_t orig = st.st_size, nblocks = (orig + bs - 1) / bs;
	struct out_buf o = {.fd = open(outname, O_WRONLY | O_CREAT | O_TRUNC, 0644)};
	if (o.fd < 0) die("open output");
	size_t per = buffered ? (1 << 20) / bs : 1;
	if (buffered) {
		o.cap = 1 << 20;
		o.p = malloc(o.cap);
	}
	unsigned char hdr[HDR];
	record(hdr, 0x13, 0, 0, 0, 0, bs);
	put(&o, hdr, HDR);
	uint32_t *lens = malloc(nblocks * 4 + 4);
	char *raw = malloc(per * bs);
	int cap = LZ4_compressBound(bs);
	char *cbuf = malloc(cap);
	uint64_t off = HDR;
	for (uint64_t b = 0; b < nblocks; b += per) {
		uint64_t start = b * bs, end = start + per * bs < orig ? start + per * bs : orig;
		preadall(fd, raw, end - start, start);
		for (uint64_t i = b; i < nblocks && i < b + per; i++) {
			int blen = i + 1 < nblocks ? (int)bs : (int)(orig - i * bs);
			int n = LZ4_compress_default(raw + (i - b) * bs, cbuf, blen, cap);
			if (n <= 0) die("compress");
			put(&o, cbuf, n);
			unsigned char crc[4];
			put32(crc, crc32c(SALT, (unsigned char *)cbuf, n));
			put(&o, crc, 4);
			lens[i] = n + 4;
			off += n + 4;
		}
	}
	put(&o, lens, nblocks * 4);
	unsigned char tr[HDR];
	record(tr, 0x16, off, nblocks, orig, crc32c(0, (unsigned char *)lens, nblocks * 4), bs);
	put(&o, tr, HDR);
	if (o.n > 0) writeall(o.fd, o.p, o.n);
	if (close(o.fd) < 0) die("close output");
	return 0;
}

int main(int argc, char **argv) {
	if (argc == 4 && (strcmp(argv[1], "-c") == 0 || strcmp(argv[1], "-cb") == 0))
		return compress_file(argv[2], argv[3], argv[1][2] == 'b');
	int decodeOnly = argc == 3 && strcmp(argv[1], "-n") == 0;
	int sync = argc == 4 && strcmp(argv[1], "-s") == 0;
	if (sync) argv++, argc--;
	if (argc != 3) {
		fprintf(stderr, "usage: lz4x [-s] IN OUT | lz4x -c|-cb IN OUT | lz4x -n IN\n");
		return 2;
	}
	int fd = open(decodeOnly ? argv[2] : argv[1], O_RDONLY);
	if (fd < 0) die("open input");
	struct zf z;
	open_zf(fd, &z);
	if (decodeOnly) {
		uint64_t clen = 0;
		for (uint64_t i = 0; i < z.blocks; i++) clen += z.lens[i];
		unsigned char *all = malloc(clen);
		char *out = malloc(z.bs);
		preadall(fd, all, clen, HDR);
		for (int check = 0; check <= 1; check++) {
			double best = 1e9;
			for (int rep = 0; rep < 3; rep++) {
				double t = now();
				unsigned char *p = all;
				for (uint64_t i = 0; i < z.blocks; i++) {
					int blen = i + 1 < z.blocks ? (int)z.bs : (int)(z.orig - i * z.bs);
					if (decode(&z, p, z.lens[i], out, blen, check) < 0) die("bad block");
					p += z.lens[i];
				}
				if ((t = now() - t) < best) best = t;
			}
			printf("%s %.0f MB/s\n", check ? "decode+crc" : "decode", z.orig / best / 1e6);
		}
		// Compression: decode everything once, then compress it again block by block.
		char *plain = malloc(z.orig);
		unsigned char *p = all;
		for (uint64_t i = 0; i < z.blocks; i++) {
			int blen = i + 1 < z.blocks ? (int)z.bs : (int)(z.orig - i * z.bs);
			if (decode(&z, p, z.lens[i], plain + i * z.bs, blen, 0) < 0) die("bad block");
			p += z.lens[i];
		}
		char *cbuf = malloc(LZ4_compressBound(z.bs) + 4);
		double best = 1e9;
		uint32_t sink = 0;
		for (int rep = 0; rep < 3; rep++) {
			double t = now();
			for (uint64_t i = 0; i < z.blocks; i++) {
				int blen = i + 1 < z.blocks ? (int)z.bs : (int)(z.orig - i * z.bs);
				int n = LZ4_compress_default(plain + i * z.bs, cbuf, blen, LZ4_compressBound(blen));
				if (n <= 0) die("compress");
				sink += crc32c(SALT, (unsigned char *)cbuf, n);
			}
			if ((t = now() - t) < best) best = t;
		}
		printf("compress+crc %.0f MB/s (%u)\n", z.orig / best / 1e6, sink & 1);
		return 0;
	}
	int out = strcmp(argv[2], "-") == 0 ? 1 : open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0) die("open output");
	size_t per = (1 << 20) / z.bs;
	unsigned char *raw = malloc(per * (z.bs + 512 + 4));
	char *buf = malloc(per * z.bs);
	off_t off = HDR;
	for (uint64_t b = 0; b < z.blocks; b += per) {
		uint64_t e = b + per < z.blocks ? b + per : z.blocks;
		size_t clen = 0, n = 0;
		for (uint64_t i = b; i < e; i++) clen += z.lens[i];
		preadall(fd, raw, clen, off);
		off += clen;
		unsigned char *p = raw;
		for (uint64_t i = b; i < e; i++) {
			int blen = i + 1 < z.blocks ? (int)z.bs : (int)(z.orig - i * z.bs);
			if (decode(&z, p, z.lens[i], buf + n, blen, 1) < 0) die("bad block");
			p += z.lens[i];
			n += blen;
		}
		writeall(out, buf, n);
	}
	if (sync && fsync(out) < 0) die("fsync output");
	if (out != 1 && close(out) < 0) die("close output");
	return 0;
}
