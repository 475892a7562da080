package ublk

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"strings"
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
	if d := os.Getenv("OBD_BENCH_DIR"); d != "" { // e.g. an ext4 mount: the guest's /tmp is tmpfs
		var err error
		if dir, err = os.MkdirTemp(d, "bench"); err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
	}
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
		benchImagePaths(b, kind.name, im, kind.compress, loop, size)
	}
}

// benchReadPath is one way a local image's reads are served: pread (the
// Target's ReadAt), ring (reads on the queue's ring, copied through the tag
// buffers) and, on kernels with AUTO_BUF_REG, zc (the default there: straight
// into the request's pages).
type benchReadPath struct {
	name string
	opts Options
}

func benchReadPaths(b *testing.B, compressed bool) []benchReadPath {
	base := benchServeMode(b)
	pread, ring, zc := base, base, base
	pread.NoRingReads = true
	ring.NoZeroCopy = true
	paths := []benchReadPath{{"pread", pread}}
	if !compressed { // a ZFile layer is not mapped: ring is pread there
		paths = append(paths, benchReadPath{"ring", ring})
	}
	f, err := Features()
	if err != nil {
		b.Fatal(err)
	}
	// Zero copy needs an image wholly in local files (mapsWhole).
	if need := FeatureAutoBufReg | FeatureUserCopy | FeatureBufRegOffDaemon; !compressed && f&need == need {
		paths = append(paths, benchReadPath{"zc", zc})
		zcUnlinked := zc
		zcUnlinked.noLinkedReads = true
		paths = append(paths, benchReadPath{"zc-unlinked", zcUnlinked})
	}
	// OBD_BENCH_PATHS=ring,zc keeps only those (e.g. to profile one path).
	if only := os.Getenv("OBD_BENCH_PATHS"); only != "" {
		keep := paths[:0]
		for _, p := range paths {
			if strings.Contains(","+only+",", ","+p.name+",") {
				keep = append(keep, p)
			}
		}
		paths = keep
	}
	return paths
}

// benchImagePaths serves im once per read path and, in each run of each load,
// measures loop and then every path back to back, so that the paths share the
// (noisy, under TCG) moment and compare by their ratios to loop.
func benchImagePaths(b *testing.B, kind string, im *lsmt.Image, compressed bool, loop string, size int64) {
	paths := benchReadPaths(b, compressed)
	devs := make([]*Device, len(paths))
	for i, p := range paths {
		dev, err := New(im, p.opts)
		if err != nil {
			b.Fatal(err)
		}
		devs[i] = dev
		defer func() {
			if err := dev.Close(); err != nil {
				b.Error(err)
			}
		}()
	}
	for _, c := range []struct {
		name   string
		bs, qd int
		random bool
	}{
		{"rand4k-qd1", 4096, 1, true},
		{"rand4k-qd32", 4096, 32, true},
		{"seq1m-qd1", 1 << 20, 1, false},
	} {
		b.Run(kind+"/"+c.name, func(b *testing.B) {
			load := func(path string) (float64, time.Duration) {
				fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT, 0)
				if err != nil {
					b.Fatal(err)
				}
				defer unix.Close(fd)
				wall, serve := ioLoadCPU(b, fd, size, c.bs, c.qd, b.N, c.random)
				return iops(b.N, wall), serve
			}
			loopIOPS, _ := load(loop)
			b.ReportMetric(loopIOPS, "loop-IOPS")
			for i, p := range paths {
				ring0, zc0 := devs[i].FileReads()
				enters0 := ringEnters(devs[i])
				res, serve := load(devs[i].Path())
				b.ReportMetric(res/loopIOPS, p.name+"-x-vs-loop")
				// CPU the serving side of this process spent per request (issue 13
				// item 0): µs per 4 KiB read, ms per MiB sequentially.
				if c.bs >= 1<<20 {
					b.ReportMetric(float64(serve.Microseconds())/1e3/float64(b.N)/float64(c.bs>>20), p.name+"-cpu-ms/MiB")
				} else {
					b.ReportMetric(float64(serve.Nanoseconds())/1e3/float64(b.N), p.name+"-cpu-us/op")
				}
				// Ring round trips: io_uring_enter calls of the queue threads per request.
				b.ReportMetric(float64(ringEnters(devs[i])-enters0)/float64(b.N), p.name+"-enters/op")
				// The path really taken: requests read on the ring, with zero copy.
				ring, zc := devs[i].FileReads()
				switch p.name {
				case "ring":
					b.ReportMetric(float64(ring-ring0)/float64(b.N), "ring-reads/op")
				case "zc", "zc-unlinked":
					b.ReportMetric(float64(zc-zc0)/float64(b.N), p.name+"-reads/op")
				}
			}
			// io_uring's worker threads: a file system without non-blocking
			// buffered reads makes the ring hand every read to one.
			b.ReportMetric(float64(ioWorkers()), "iou-wrk-threads")
		})
	}
}

// ringEnters sums the io_uring_enter calls of d's queue threads.
func ringEnters(d *Device) uint64 {
	var n uint64
	for _, q := range d.queues {
		n += q.enters.Load()
	}
	return n
}

// ioWorkers counts this process's io_uring worker threads (iou-wrk-*).
func ioWorkers() int {
	tasks, _ := os.ReadDir("/proc/self/task")
	n := 0
	for _, t := range tasks {
		if comm, err := os.ReadFile("/proc/self/task/" + t.Name() + "/comm"); err == nil && strings.HasPrefix(string(comm), "iou-wrk") {
			n++
		}
	}
	return n
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
