package zfile

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// benchFiles writes size bytes of real files (benchData) raw and as an LZ4 ZFile
// into a temp dir and returns both open files.
func benchFiles(b *testing.B, size int) (raw, zf *os.File) {
	b.Helper()
	dir := b.TempDir()
	src := benchData(b, size)
	rawPath, zPath := filepath.Join(dir, "raw"), filepath.Join(dir, "zfile")
	if err := os.WriteFile(rawPath, src, 0o644); err != nil {
		b.Fatal(err)
	}
	out, err := os.Create(zPath)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := Compress(out, bytes.NewReader(src), Options{}); err != nil {
		b.Fatal(err)
	}
	out.Close()
	if raw, err = os.Open(rawPath); err != nil {
		b.Fatal(err)
	}
	if zf, err = os.Open(zPath); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { raw.Close(); zf.Close() })
	return raw, zf
}

// benchData is size bytes of a layer's kind of content: the file ZFILE_BENCH_DATA
// names (such as a tar of /usr), repeated to size, or else real files
// (mixedData).
func benchData(b *testing.B, size int) []byte {
	b.Helper()
	name := os.Getenv("ZFILE_BENCH_DATA")
	if name == "" {
		return mixedData(b, size)
	}
	data, err := os.ReadFile(name)
	if err != nil || len(data) == 0 {
		b.Fatalf("ZFILE_BENCH_DATA: %v (%d bytes)", err, len(data))
	}
	out := make([]byte, 0, size)
	for len(out) < size {
		out = append(out, data[:min(len(data), size-len(out))]...)
	}
	return out
}

// cost is the wall and CPU (user + system, all threads) time of some calls.
type cost struct{ wall, cpu time.Duration }

// per divides c by n calls.
func (c cost) per(n int) cost { return cost{c.wall / time.Duration(n), c.cpu / time.Duration(n)} }

// timeLoop runs fn n times and returns the time it took.
func timeLoop(n int, fn func(i int)) cost {
	var c cost
	timed(&c.wall, &c.cpu, func() {
		for i := 0; i < n; i++ {
			fn(i)
		}
	})
	return c
}

// interleave runs fa and fb n times each, alternating in chunks so that load from
// other processes affects both alike, and returns the cost per call of each.
func interleave(n int, fa, fb func(i int)) (ca, cb cost) {
	const chunk = 256
	for i := 0; i < n; i += chunk {
		k := min(chunk, n-i)
		a := timeLoop(k, func(j int) { fa(i + j) })
		c := timeLoop(k, func(j int) { fb(i + j) })
		ca.wall, ca.cpu = ca.wall+a.wall, ca.cpu+a.cpu
		cb.wall, cb.cpu = cb.wall+c.wall, cb.cpu+c.cpu
	}
	return ca.per(n), cb.per(n)
}

// reportCPU reports c's CPU time per call in unit ("cpu-ns/zfile-read"...).
func reportCPU(b *testing.B, c cost, scale float64, unit string) {
	b.ReportMetric(float64(c.cpu.Nanoseconds())/scale, unit)
}

// BenchmarkRandomRead4K: random aligned 4 KiB reads through the ZFile reader versus
// pread of the same bytes from the uncompressed file (both in the page cache),
// interleaved: wall and CPU time per read of each, and the ratios. CPU time is what
// a device serving the reads spends (load from other processes does not inflate it).
func BenchmarkRandomRead4K(b *testing.B) {
	const size = 64 << 20
	raw, zf := benchFiles(b, size)
	st, _ := zf.Stat()
	z, err := Open(zf, st.Size(), WithName(zf.Name()))
	if err != nil {
		b.Fatal(err)
	}
	offs := make([]int64, 4096)
	rng := rand.New(rand.NewSource(1))
	for i := range offs {
		offs[i] = rng.Int63n(size/4096) * 4096
	}
	p := make([]byte, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	base, zt := interleave(b.N, func(i int) { raw.ReadAt(p, offs[i%len(offs)]) }, func(i int) {
		if _, err := z.ReadAt(p, offs[i%len(offs)]); err != nil {
			b.Fatal(err)
		}
	})
	b.ReportMetric(float64(base.wall.Nanoseconds()), "ns/pread")
	b.ReportMetric(float64(zt.wall.Nanoseconds()), "ns/zfile-read")
	b.ReportMetric(float64(zt.wall)/float64(base.wall), "x-vs-baseline")
	reportCPU(b, base, 1, "cpu-ns/pread")
	reportCPU(b, zt, 1, "cpu-ns/zfile-read")
	b.ReportMetric(float64(zt.cpu)/float64(base.cpu), "x-cpu-vs-pread")
}

// BenchmarkSequentialRead512 justifies the block cache: 512-byte sequential reads
// decompress each 4 KiB block once with it, eight times without.
func BenchmarkSequentialRead512(b *testing.B) {
	const size = 8 << 20
	_, zf := benchFiles(b, size)
	st, _ := zf.Stat()
	cached, _ := Open(zf, st.Size())
	uncached, _ := Open(zf, st.Size(), WithBlockCache(0))
	p := make([]byte, 512)
	b.ResetTimer()
	read := func(z *Reader) func(int) {
		return func(i int) {
			if _, err := z.ReadAt(p, int64(i*512)%size); err != nil {
				b.Fatal(err)
			}
		}
	}
	base, ct := interleave(b.N, read(uncached), read(cached))
	b.ReportMetric(float64(base.wall.Nanoseconds()), "ns/uncached")
	b.ReportMetric(float64(ct.wall.Nanoseconds()), "ns/cached")
	b.ReportMetric(float64(base.wall)/float64(ct.wall), "speedup-x")
}

// BenchmarkCompress: compression throughput with 2 workers versus 1 (the baseline),
// for both algorithms, on 16 MiB of compressible data, read from a file-like source
// (ReadFrom: the workers read their batches) and written in 1 MiB pieces (Write:
// the streaming builder of commit -z); the CPU-time ratio shows what the parallel
// pipeline costs whatever the load from other processes.
func BenchmarkCompress(b *testing.B) {
	src := append(testData(98, 12<<20, true), testData(97, 4<<20, false)...)
	for _, tc := range []struct {
		algo   Algorithm
		stream bool
	}{{LZ4, false}, {LZ4, true}, {Zstd, false}} {
		name := tc.algo.String() + "/readfrom"
		if tc.stream {
			name = tc.algo.String() + "/write"
		}
		algo := tc.algo
		b.Run(name, func(b *testing.B) {
			compress := func(workers int) {
				zw, err := NewWriter(io.Discard, Options{Algorithm: algo, Workers: workers})
				if err != nil {
					b.Fatal(err)
				}
				if tc.stream {
					for p := src; len(p) > 0 && err == nil; p = p[min(len(p), 1<<20):] {
						_, err = zw.Write(p[:min(len(p), 1<<20)])
					}
				} else {
					_, err = zw.ReadFrom(bytes.NewReader(src))
				}
				if cerr := zw.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(len(src)))
			// Interleave the runs so that load from other processes hits both alike.
			var one, two, cpuOne, cpuTwo time.Duration
			for i := 0; i < b.N; i++ {
				timed(&one, &cpuOne, func() { compress(1) })
				timed(&two, &cpuTwo, func() { compress(2) })
			}
			n := len(src) * b.N
			b.ReportMetric(mbps(n, one), "MB/s-1worker")
			b.ReportMetric(mbps(n, two), "MB/s-2workers")
			b.ReportMetric(float64(one)/float64(two), "x-vs-baseline")
			// CPU time per byte, 2 workers over 1: what parallelism costs (1.0 = nothing).
			b.ReportMetric(float64(cpuTwo)/float64(cpuOne), "x-cpu-2workers-vs-1")
			b.ReportMetric(mbps(n, cpuOne), "MB/s-per-cpu-second")
			b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "cpus")
		})
	}
}

// BenchmarkRead1M: 1 MiB sequential reads (what a ublk device passes for large
// I/O) decoded on all cores versus on one (the baseline), and versus pread of the
// same bytes uncompressed, interleaved: wall time per read, CPU time (all
// threads) per MiB of each, and the ratios. Parallel decoding buys wall time with
// CPU (x-cpu-vs-1core is its price).
func BenchmarkRead1M(b *testing.B) {
	const size = 64 << 20
	raw, zf := benchFiles(b, size)
	st, _ := zf.Stat()
	z, err := Open(zf, st.Size(), WithBlockCache(0))
	if err != nil {
		b.Fatal(err)
	}
	serial, _ := Open(zf, st.Size(), WithBlockCache(0))
	serial.serial = true
	p := make([]byte, 1<<20)
	read := func(z *Reader) func(int) {
		return func(i int) {
			if _, err := z.ReadAt(p, int64(i%(size>>20))<<20); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.SetBytes(1 << 20)
	b.ReportAllocs()
	b.ResetTimer()
	one, all := interleave(b.N, read(serial), read(z))
	pread, _ := interleave(b.N, func(i int) { raw.ReadAt(p, int64(i%(size>>20))<<20) }, func(int) {})
	b.StopTimer()
	b.ReportMetric(float64(all.wall.Microseconds()), "us/read")
	b.ReportMetric(float64(one.wall)/float64(all.wall), "speedup-vs-1core")
	b.ReportMetric(float64(all.wall)/float64(pread.wall), "x-vs-pread")
	reportCPU(b, all, 1e6, "cpu-ms/MiB")
	reportCPU(b, one, 1e6, "cpu-ms/MiB-1core")
	reportCPU(b, pread, 1e6, "cpu-ms/MiB-pread")
	b.ReportMetric(float64(all.cpu)/float64(one.cpu), "x-cpu-vs-1core")
	b.ReportMetric(float64(one.cpu)/float64(pread.cpu), "x-cpu-1core-vs-pread")
}
