package zfile

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/obd-project/obd/crc32c"
	"github.com/obd-project/obd/internal/benchdata"
	"github.com/pierrec/lz4/v4"
)

// mixedData returns size bytes of real files (benchdata.GoRootFiles); testData
// fills in if GOROOT holds fewer bytes.
func mixedData(b *testing.B, size int) []byte {
	b.Helper()
	out := benchdata.GoRootFiles(size)
	return append(out, testData(3, size-len(out), true)...)
}

// cpuTime is the CPU time (user + system) the process has used: unlike wall time,
// it does not grow when other processes load the machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// timed runs fn once and adds its wall and CPU time to *wall and *cpu.
func timed(wall, cpu *time.Duration, fn func()) {
	c, t := cpuTime(), time.Now()
	fn()
	*wall += time.Since(t)
	*cpu += cpuTime() - c
}

func mbps(n int, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }

// BenchmarkCodecLZ4 separates the codec from the ZFile machinery, on one core
// (MB per CPU second): zfile's LZ4 block compressor and pierrec/lz4's decoder
// alone over 4 KiB blocks versus the single-worker Writer and the one-worker
// decode of the same data, and CRC32C throughput (hardware CRC32C does several GB/s; a table would do ~1).
func BenchmarkCodecLZ4(b *testing.B) {
	src := mixedData(b, 32<<20)
	const bs = 4096
	var c lz4.CompressorCCompat
	comp := make([]byte, 0, len(src)+len(src)/8)
	var lens []int
	for off := 0; off < len(src); off += bs {
		blk := src[off:min(off+bs, len(src))]
		dst := comp[len(comp) : len(comp)+lz4.CompressBlockBound(len(blk))]
		n, err := c.CompressBlock(blk, dst)
		if err != nil {
			b.Fatal(err)
		}
		comp = comp[:len(comp)+n]
		lens = append(lens, n)
	}
	zb := compressBytes(b, src, Options{Workers: 1})
	z := openBytes(b, zb, WithBlockCache(0))
	out := make([]byte, bs)
	scratch := make([]byte, 0, lz4Bound(bs))
	lzc := new(lz4Compressor)
	codecCompress := func(int) {
		for off := 0; off < len(src); off += bs {
			lzc.compress(scratch, src[off:min(off+bs, len(src))])
		}
	}
	writer := func(int) {
		if _, err := Compress(io.Discard, bytes.NewReader(src), Options{Workers: 1}); err != nil {
			b.Fatal(err)
		}
	}
	codecDecode := func(int) {
		rest := comp
		for i, l := range lens {
			if _, err := lz4.UncompressBlock(rest[:l], out[:min(bs, len(src)-i*bs)]); err != nil {
				b.Fatal(err)
			}
			rest = rest[l:]
		}
	}
	zfileDecode := func(int) {
		if err := z.Verify(); err != nil { // one goroutine: read, CRC, decode
			b.Fatal(err)
		}
	}
	crc := func(int) { crc32c.Salted(src) }
	b.ResetTimer()
	// Everything runs on one goroutine: CPU time is the work, whatever the load.
	var wall, cc, wr, cd, zd, cr time.Duration
	for i := 0; i < b.N; i++ {
		timed(&wall, &cc, func() { codecCompress(i) })
		timed(&wall, &wr, func() { writer(i) })
		timed(&wall, &cd, func() { codecDecode(i) })
		timed(&wall, &zd, func() { zfileDecode(i) })
		timed(&wall, &cr, func() { crc(i) })
	}
	b.StopTimer()
	b.ReportMetric(mbps(len(src)*b.N, cc), "MB/s-codec-compress")
	b.ReportMetric(mbps(len(src)*b.N, wr), "MB/s-writer-1worker")
	b.ReportMetric(float64(wr)/float64(cc), "x-writer-vs-codec")
	b.ReportMetric(mbps(len(src)*b.N, cd), "MB/s-codec-decode")
	b.ReportMetric(mbps(len(src)*b.N, zd), "MB/s-zfile-decode-1core")
	b.ReportMetric(float64(zd)/float64(cd), "x-zfile-vs-codec")
	b.ReportMetric(mbps(len(src)*b.N, cr), "MB/s-crc32c")
	b.ReportMetric(float64(len(zb))/float64(len(src)), "ratio")
}

// BenchmarkDecompressAll: what `obd zfile -x` does to stdout (WriteTo, pipelined) versus
// reading the same bytes uncompressed from a file in 1 MiB preads (the baseline),
// and versus the former way, io.Copy (32 KiB) through ReadAt; wall time and CPU
// time per MiB (CPU time is what other load on the machine does not inflate).
func BenchmarkDecompressAll(b *testing.B) {
	const size = 64 << 20
	src := mixedData(b, size)
	dir := b.TempDir()
	rawPath, zPath := filepath.Join(dir, "raw"), filepath.Join(dir, "zfile")
	if err := os.WriteFile(rawPath, src, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(zPath, compressBytes(b, src, Options{}), 0o644); err != nil {
		b.Fatal(err)
	}
	raw, err := os.Open(rawPath)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	zf, err := os.Open(zPath)
	if err != nil {
		b.Fatal(err)
	}
	defer zf.Close()
	st, _ := zf.Stat()
	z, err := Open(zf, st.Size(), WithBlockCache(0))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	pread := func(int) {
		for off := int64(0); off < size; off += int64(len(buf)) {
			if _, err := raw.ReadAt(buf, off); err != nil && err != io.EOF {
				b.Fatal(err)
			}
		}
	}
	writeTo := func(int) {
		if n, err := z.WriteTo(io.Discard); err != nil || n != size {
			b.Fatal(n, err)
		}
	}
	copyReadAt := func(int) {
		// struct{}: hide io.Discard's ReaderFrom, as the CLI's file writer did.
		if _, err := io.Copy(struct{ io.Writer }{io.Discard}, io.NewSectionReader(z, 0, size)); err != nil {
			b.Fatal(err)
		}
	}
	// Into a new file, as `obd zfile -x` does: WriteToAt (each worker writes its
	// runs at their offsets) versus WriteTo (runs written in order by one).
	outPath := filepath.Join(dir, "out")
	toFile := func(wall, cpu *time.Duration, at bool) {
		os.Remove(outPath)
		f, err := os.Create(outPath)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		timed(wall, cpu, func() {
			var n int64
			if at {
				n, err = z.WriteToAt(f)
			} else {
				n, err = z.WriteTo(f)
			}
			if err != nil || n != size {
				b.Fatal(n, err)
			}
		})
	}
	b.SetBytes(size)
	b.ResetTimer()
	var tp, tw, tc, cp, cw, cc, tfa, cfa, tfw, cfw time.Duration
	for i := 0; i < b.N; i++ {
		timed(&tp, &cp, func() { pread(i) })
		timed(&tw, &cw, func() { writeTo(i) })
		timed(&tc, &cc, func() { copyReadAt(i) })
		toFile(&tfa, &cfa, true)
		toFile(&tfw, &cfw, false)
	}
	mib := float64(size>>20) * float64(b.N)
	b.ReportMetric(mbps(size*b.N, tw), "MB/s-writeto")
	b.ReportMetric(float64(tw)/float64(tp), "x-vs-pread")
	b.ReportMetric(float64(tc)/float64(tw), "speedup-vs-copy32k")
	b.ReportMetric(float64(cw.Microseconds())/mib, "cpu-us/MiB-writeto")
	b.ReportMetric(float64(cc.Microseconds())/mib, "cpu-us/MiB-copy32k")
	b.ReportMetric(float64(cp.Microseconds())/mib, "cpu-us/MiB-pread")
	b.ReportMetric(float64(cfa.Microseconds())/mib, "cpu-us/MiB-file-writetoat")
	b.ReportMetric(float64(cfw.Microseconds())/mib, "cpu-us/MiB-file-writeto")
	b.ReportMetric(float64(tfw)/float64(tfa), "speedup-file-writetoat")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "cpus")
}

// BenchmarkCodecFile runs the LZ4 codec over the blocks of one ZFile held in
// memory, on one goroutine, and reports MB of output per CPU second: decoding
// alone, decoding + CRC, and compressing the decoded blocks again + CRC: the
// figures to set against liblz4's on the same blocks (tests/bench/lz4x -n, which
// tests/bench/zfile-x.sh runs with ZFILE_BENCH_FILE naming the same file).
// Without ZFILE_BENCH_FILE it uses 64 MiB of the Go toolchain's files.
func BenchmarkCodecFile(b *testing.B) {
	var zb []byte
	if path := os.Getenv("ZFILE_BENCH_FILE"); path != "" {
		var err error
		if zb, err = os.ReadFile(path); err != nil {
			b.Fatal(err)
		}
	} else {
		zb = compressBytes(b, mixedData(b, 64<<20), Options{})
	}
	z := openBytes(b, zb, WithBlockCache(0))
	if z.info.Algorithm != LZ4 {
		b.Fatalf("%v file, want lz4", z.info.Algorithm)
	}
	type block struct {
		raw  []byte
		blen int
	}
	blocks := make([]block, len(z.lens))
	for i := range blocks {
		off := z.blockOffset(int64(i))
		blocks[i] = block{zb[off : off+int64(z.lens[i])], int(z.blockLen(int64(i)))}
	}
	plain := make([]byte, z.size)
	if _, err := z.ReadAt(plain, 0); err != nil {
		b.Fatal(err)
	}
	out := make([]byte, z.bs)
	decode := func() {
		for _, bl := range blocks {
			data := bl.raw
			if z.info.Verify {
				data = data[:len(data)-crcSize]
			}
			if err := decompressBlock(LZ4, data, out[:bl.blen]); err != nil {
				b.Fatal(err)
			}
		}
	}
	decodeCRC := func() {
		for _, bl := range blocks {
			if err := z.decodeOnce(bl.raw, out[:bl.blen]); err != nil {
				b.Fatal(err)
			}
		}
	}
	lzc := new(lz4Compressor)
	cbuf := make([]byte, 0, lz4Bound(int(z.bs)))
	compress := func() {
		for i, bl := range blocks {
			crc32c.Salted(lzc.compress(cbuf, plain[int64(i)*z.bs:][:bl.blen]))
		}
	}
	b.SetBytes(z.size)
	b.ResetTimer()
	var wall, cd, cc, ce time.Duration
	for i := 0; i < b.N; i++ {
		timed(&wall, &cd, decode)
		timed(&wall, &cc, decodeCRC)
		timed(&wall, &ce, compress)
	}
	b.StopTimer()
	n := int(z.size) * b.N
	b.ReportMetric(mbps(n, cd), "MB/s-decode")
	b.ReportMetric(mbps(n, cc), "MB/s-decode+crc")
	b.ReportMetric(mbps(n, ce), "MB/s-compress+crc")
}

// BenchmarkLZ4Compress: zfile's LZ4 block compressor (lz4Compressor.compress) versus
// pierrec/lz4's CompressorCCompat, which emit the same bytes, over 4 KiB and
// 64 KiB blocks of real files (ZFILE_BENCH_DATA names a file to use instead, such
// as a tar of /usr), interleaved on one goroutine: CPU ns per MB of input each, and
// how many times faster the new one is.
func BenchmarkLZ4Compress(b *testing.B) {
	src := mixedData(b, 32<<20)
	if name := os.Getenv("ZFILE_BENCH_DATA"); name != "" {
		var err error
		if src, err = os.ReadFile(name); err != nil {
			b.Fatal(err)
		}
	}
	for _, bs := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("bs=%dk", bs>>10), func(b *testing.B) {
			var ref lz4.CompressorCCompat
			c := new(lz4Compressor)
			dst := make([]byte, lz4Bound(bs))
			old := func() {
				for off := 0; off < len(src); off += bs {
					if _, err := ref.CompressBlock(src[off:min(off+bs, len(src))], dst); err != nil {
						b.Fatal(err)
					}
				}
			}
			cur := func() {
				for off := 0; off < len(src); off += bs {
					c.compress(dst[:0], src[off:min(off+bs, len(src))])
				}
			}
			var wall, tOld, tNew time.Duration
			for i := 0; i < b.N; i++ {
				timed(&wall, &tOld, old)
				timed(&wall, &tNew, cur)
			}
			mb := float64(len(src)*b.N) / 1e6
			b.ReportMetric(float64(tOld.Nanoseconds())/mb, "ns/MB-ccompat")
			b.ReportMetric(float64(tNew.Nanoseconds())/mb, "ns/MB-zfile")
			b.ReportMetric(float64(tOld)/float64(tNew), "x-faster")
		})
	}
}
