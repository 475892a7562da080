package image

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/internal/benchdata"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/zfile"
)

// benchDiskSize is the virtual size of the benchmark images.
const benchDiskSize = 64 << 20

// benchContent returns size bytes of real files (benchdata.GoRootFiles), repeated
// when GOROOT holds fewer.
func benchContent(b *testing.B, size int) []byte {
	b.Helper()
	out := benchdata.GoRootFiles(size)
	if len(out) == 0 {
		b.Fatalf("no files under GOROOT %s to build the benchmark image from", runtime.GOROOT())
	}
	for len(out) < size {
		out = append(out, out[:min(len(out), size-len(out))]...)
	}
	return out
}

// benchImage builds a two-layer image on disk (a base holding the whole disk and
// a top layer rewriting a quarter of it in 4 KiB-aligned extents of 4-256 KiB, as a
// file system does) and opens it as obd serves it: the sealed layers as they are,
// or each compressed into a ZFile (LZ4, 4 KiB blocks). It returns the image and
// the expected disk content.
func benchImage(b *testing.B, zfiles bool) (*Image, []byte) {
	b.Helper()
	dir := b.TempDir()
	src := benchContent(b, benchDiskSize+benchDiskSize/2)
	model := make([]byte, benchDiskSize)
	r := rand.New(rand.NewPCG(7, 8))
	var lowers []string
	for i := range 2 {
		data, err := os.Create(filepath.Join(dir, fmt.Sprint(i, ".data")))
		if err != nil {
			b.Fatal(err)
		}
		index, err := os.Create(filepath.Join(dir, fmt.Sprint(i, ".index")))
		if err != nil {
			b.Fatal(err)
		}
		w, err := lsmt.Create(data, index, lsmt.CreateOptions{VirtualSize: benchDiskSize})
		if err != nil {
			b.Fatal(err)
		}
		write := func(off, n int) {
			p := src[r.IntN(len(src)-n):][:n]
			if _, err := w.WriteAt(p, int64(off)); err != nil {
				b.Fatal(err)
			}
			copy(model[off:], p)
		}
		if i == 0 {
			for off := 0; off < benchDiskSize; off += 1 << 20 {
				write(off, 1<<20)
			}
		} else {
			for range benchDiskSize / 4 / (130 << 10) {
				n := (1 + r.IntN(64)) * 4096
				write(r.IntN((benchDiskSize-n)/4096)*4096, n)
			}
		}
		path := filepath.Join(dir, fmt.Sprint(i, ".commit"))
		out, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if zfiles {
			zw, err := zfile.NewWriter(out, zfile.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if err := lsmt.Commit(zw, w.CommitSource(), lsmt.CommitOptions{}); err != nil {
				b.Fatal(err)
			}
			if err := zw.Close(); err != nil {
				b.Fatal(err)
			}
		} else if err := lsmt.Commit(out, w.CommitSource(), lsmt.CommitOptions{}); err != nil {
			b.Fatal(err)
		}
		out.Close()
		w.Close()
		lowers = append(lowers, fmt.Sprintf(`{"file":%q}`, path))
	}
	cfg, err := config.ParseImageConfig([]byte(fmt.Sprintf(`{"lowers":[%s,%s]}`, lowers[0], lowers[1])), dir)
	if err != nil {
		b.Fatal(err)
	}
	im, err := Open(context.Background(), cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { im.Close() })
	return im, model
}

// processCPU is the CPU time (user + system) the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTargetRead measures what a device read costs obd's data path (the
// Target that ublk and FUSE serve, over local layers in the page cache): 4 KiB
// reads at random aligned offsets, 1 MiB sequential reads, and 1 MiB reads from
// many goroutines (par1m), over sealed LSMT
// layers and over the same layers as ZFile LZ4. Besides ns/op, B/op and
// allocs/op it reports cpu-ns/op, the process's CPU time per read (all cores:
// parallel decoding shows there), which load from other processes does not
// inflate; and for rand4k and seq1m the same reads as pread of the disk's
// uncompressed bytes from one file (cpu-ns/pread) and the ratio (x-cpu-vs-pread,
// issue 13's "vs pread of the uncompressed bytes").
func BenchmarkTargetRead(b *testing.B) {
	for _, kind := range []string{"lsmt", "zfile"} {
		b.Run(kind, func(b *testing.B) {
			im, model := benchImage(b, kind == "zfile")
			flat, err := os.Create(filepath.Join(b.TempDir(), "flat"))
			if err != nil {
				b.Fatal(err)
			}
			defer flat.Close()
			if _, err := flat.Write(model); err != nil {
				b.Fatal(err)
			}
			for _, c := range []struct {
				name string
				size int
				at   func(i int) int64
			}{
				{"rand4k", 4096, func(i int) int64 {
					return int64(rand.New(rand.NewPCG(uint64(i), 1)).IntN(benchDiskSize/4096)) * 4096
				}},
				{"seq1m", 1 << 20, func(i int) int64 { return int64(i%(benchDiskSize>>20)) << 20 }},
			} {
				b.Run(c.name, func(b *testing.B) {
					offs := make([]int64, 4096)
					for i := range offs {
						offs[i] = c.at(i)
					}
					p := make([]byte, c.size)
					// Correctness first, outside the timed loop.
					for _, off := range offs[:64] {
						if _, err := im.ReadAt(p, off); err != nil || !bytes.Equal(p, model[off:off+int64(c.size)]) {
							b.Fatalf("read at %d: wrong data (%v)", off, err)
						}
					}
					b.SetBytes(int64(c.size))
					b.ReportAllocs()
					b.ResetTimer()
					cpu := processCPU()
					for i := 0; i < b.N; i++ {
						if _, err := im.ReadAt(p, offs[i%len(offs)]); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					target := processCPU() - cpu
					cpu = processCPU()
					for i := 0; i < b.N; i++ {
						if _, err := flat.ReadAt(p, offs[i%len(offs)]); err != nil {
							b.Fatal(err)
						}
					}
					pread := processCPU() - cpu
					b.ReportMetric(float64(target.Nanoseconds())/float64(b.N), "cpu-ns/op")
					b.ReportMetric(float64(pread.Nanoseconds())/float64(b.N), "cpu-ns/pread")
					b.ReportMetric(float64(target)/float64(max(pread, 1)), "x-cpu-vs-pread")
				})
			}
			// 1 MiB reads from 4 goroutines per core: a device queue at depth, every
			// core busy; cpu-ns/op is then what a read costs, parallel decoding or not.
			b.Run("par1m", func(b *testing.B) {
				b.SetBytes(1 << 20)
				b.ReportAllocs()
				b.SetParallelism(4)
				b.ResetTimer()
				cpu := processCPU()
				var next atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					p := make([]byte, 1<<20)
					for pb.Next() {
						off := next.Add(1) % (benchDiskSize >> 20) << 20
						if _, err := im.ReadAt(p, off); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.StopTimer()
				b.ReportMetric(float64((processCPU()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
			})
		})
	}
}
