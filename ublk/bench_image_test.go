package ublk

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/zfile"
	"golang.org/x/sys/unix"
)

// sealedImage writes raw's bytes as a sealed LSMT layer (optionally ZFile LZ4) at
// path and opens it as the stacked image obd serves.
func sealedImage(tb testing.TB, raw *os.File, size int64, path string, compress bool) *lsmt.Image {
	tb.Helper()
	var segs []lsmt.Segment
	for s := uint64(0); s < uint64(size/lsmt.SectorSize); s += lsmt.MaxLength {
		l := min(uint64(size/lsmt.SectorSize)-s, lsmt.MaxLength)
		segs = append(segs, lsmt.Segment{Offset: s, Length: uint32(l), MOffset: s})
	}
	out, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	var w io.Writer = out
	var zw *zfile.Writer
	if compress {
		if zw, err = zfile.NewWriter(out, zfile.Options{}); err != nil {
			tb.Fatal(err)
		}
		w = zw
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	src := lsmt.Source{Segments: segs, Files: []io.ReaderAt{raw}, VirtualSize: uint64(size)}
	if err := lsmt.Commit(bw, src, lsmt.CommitOptions{}); err != nil {
		tb.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		tb.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			tb.Fatal(err)
		}
	}
	st, _ := out.Stat()
	var r io.ReaderAt = out
	rsize := st.Size()
	if compress {
		z, err := zfile.Open(out, st.Size())
		if err != nil {
			tb.Fatal(err)
		}
		r, rsize = z, z.Size()
	}
	l, err := lsmt.OpenLayer(r, rsize)
	if err != nil {
		tb.Fatal(err)
	}
	im, err := lsmt.NewImage([]*lsmt.Layer{l}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return im
}

// BenchmarkImageVsLoop is issue #3's comparison: a sealed local image (plain LSMT
// and ZFile LZ4) served through /dev/ublkbN against the kernel loop device over the
// same raw bytes, in the same VM and run. x-vs-loop = image IOPS / loop IOPS.
// Each read path (benchReadPaths) gets its own device and sub-benchmarks.
func BenchmarkImageVsLoop(b *testing.B) {
	requireUblk(b)
	const size = 128 << 20
	dir := b.TempDir()
	rawPath := filepath.Join(dir, "disk.raw")
	raw, err := os.Create(rawPath)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	chunk := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		randomBytes(chunk, uint64(off))
		// Half of every MiB compressible, like real file-system images.
		clear(chunk[len(chunk)/2:])
		if _, err := raw.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
	}
	loop := loopDevice(b, rawPath)
	for _, kind := range []struct {
		name     string
		compress bool
	}{{"lsmt", false}, {"zfile-lz4", true}} {
		im := sealedImage(b, raw, size, filepath.Join(dir, kind.name), kind.compress)
		for _, mode := range benchReadPaths(b) {
			if kind.compress && mode.name == "ring" {
				continue // a ZFile layer is not mapped: the same path as pread
			}
			benchImageDevice(b, kind.name+"/"+mode.name, im, mode.opts, loop, size)
		}
	}
}

// benchReadPaths are the ways a local image's reads are served, compared in one
// run: pread (the Target's ReadAt), ring (reads on the queue's ring, copied
// through the tag buffers) and, on kernels with AUTO_BUF_REG, zc (the default
// there: straight into the request's pages).
func benchReadPaths(b *testing.B) []struct {
	name string
	opts Options
} {
	base := benchServeMode(b)
	pread, ring, zc := base, base, base
	pread.NoRingReads = true
	ring.NoZeroCopy = true
	paths := []struct {
		name string
		opts Options
	}{{"pread", pread}, {"ring", ring}}
	f, err := Features()
	if err != nil {
		b.Fatal(err)
	}
	if need := FeatureAutoBufReg | FeatureUserCopy | FeatureBufRegOffDaemon; f&need == need {
		paths = append(paths, struct {
			name string
			opts Options
		}{"zc", zc})
	}
	return paths
}

// benchImageDevice serves im with opts and compares it with loop.
func benchImageDevice(b *testing.B, name string, im *lsmt.Image, opts Options, loop string, size int64) {
	dev, err := New(im, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := dev.Close(); err != nil {
			b.Fatal(err)
		}
	}()
	for _, c := range []struct {
		name   string
		bs, qd int
		random bool
	}{
		{"rand4k-qd1", 4096, 1, true},
		{"rand4k-qd32", 4096, 32, true},
		{"seq1m-qd1", 1 << 20, 1, false},
	} {
		b.Run(name+"/"+c.name, func(b *testing.B) {
			var res [2]float64
			var serve time.Duration
			ring0, zc0 := dev.FileReads()
			for i, p := range []string{loop, dev.Path()} {
				fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECT, 0)
				if err != nil {
					b.Fatal(err)
				}
				var wall time.Duration
				wall, serve = ioLoadCPU(b, fd, size, c.bs, c.qd, b.N, c.random)
				res[i] = iops(b.N, wall)
				unix.Close(fd)
			}
			b.ReportMetric(res[0], "loop-IOPS")
			b.ReportMetric(res[1], "image-IOPS")
			b.ReportMetric(res[1]/res[0], "x-vs-loop")
			// CPU the serving side of this process spent per request (issue 13
			// item 0): µs per 4 KiB read, ms per MiB sequentially.
			if c.bs >= 1<<20 {
				b.ReportMetric(float64(serve.Microseconds())/1e3/float64(b.N)/float64(c.bs>>20), "serve-cpu-ms/MiB")
			} else {
				b.ReportMetric(float64(serve.Nanoseconds())/1e3/float64(b.N), "serve-cpu-us/op")
			}
			// Target calls seen blocking so far: each moved a queue to its worker pool for a while.
			var blocks uint64
			for _, q := range dev.queues {
				if q.policy != nil {
					blocks += q.policy.blocks.Load()
				}
			}
			b.ReportMetric(float64(blocks), "blocking-calls")
			// Requests read on the queue's ring and with zero copy, per request.
			ring, zc := dev.FileReads()
			b.ReportMetric(float64(ring-ring0)/float64(b.N), "ring-reads/op")
			b.ReportMetric(float64(zc-zc0)/float64(b.N), "zc-reads/op")
		})
	}
}

// benchServeMode reads OBD_UBLK_MODE (adaptive, the default; workers; inthread)
// so the serve modes can be compared on the same benchmark.
func benchServeMode(b *testing.B) Options {
	var o Options
	switch m := os.Getenv("OBD_UBLK_MODE"); m {
	case "", "adaptive":
	case "workers":
		o.AlwaysWorkers = true
	case "inthread":
		o.InThread = true
	default:
		b.Fatalf("OBD_UBLK_MODE=%q: want adaptive, workers or inthread", m)
	}
	return o
}
