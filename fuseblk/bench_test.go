package fuseblk

import (
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const benchSize = 256 << 20

// BenchmarkFuseRead reads through the FUSE file (buffered, page cache dropped with
// POSIX_FADV_DONTNEED so every pass is cold) and reports the time relative to the
// same reads straight from the RAM Target, measured in the same run.
func BenchmarkFuseRead(b *testing.B) {
	requireRoot(b)
	tgt := newMemTarget(benchSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range tgt.data {
		tgt.data[i] = byte(rng.Uint32())
	}
	m := mountT(b, tgt, &Options{ReadOnly: true})
	f, err := os.Open(m.Path())
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())

	b.Run("seq-1MiB", func(b *testing.B) {
		const bs = 1 << 20
		buf := make([]byte, bs)
		offAt := func(i int) int64 { return int64(i) * bs % benchSize }
		fuseRead := func(i int) error {
			off := offAt(i)
			if off == 0 { // new pass: start cold
				if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
					return err
				}
			}
			_, err := f.ReadAt(buf, off)
			return err
		}
		direct := func(i int) error { _, err := tgt.ReadAt(buf, offAt(i)); return err }
		benchRatio(b, bs, fuseRead, direct)
	})
	b.Run("rand-4KiB", func(b *testing.B) {
		const bs = 4096
		buf := make([]byte, bs)
		r := rand.New(rand.NewPCG(3, 4))
		offs := make([]int64, 1<<16)
		for i := range offs {
			offs[i] = r.Int64N(benchSize/bs) * bs
		}
		fuseRead := func(i int) error {
			off := offs[i%len(offs)]
			if err := unix.Fadvise(fd, off, bs, unix.FADV_DONTNEED); err != nil {
				return err
			}
			_, err := f.ReadAt(buf, off)
			return err
		}
		direct := func(i int) error { _, err := tgt.ReadAt(buf, offs[i%len(offs)]); return err }
		benchRatio(b, bs, fuseRead, direct)
	})
}

// benchRatio times b.N calls of measured, then b.N calls of baseline, and reports
// measured/baseline as "x-vs-baseline".
func benchRatio(b *testing.B, bytesPerOp int64, measured, baseline func(i int) error) {
	b.SetBytes(bytesPerOp)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := measured(i); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	start = time.Now()
	for i := 0; i < b.N; i++ {
		if err := baseline(i); err != nil {
			b.Fatal(err)
		}
	}
	base := time.Since(start)
	b.ReportMetric(float64(elapsed)/float64(max(base, 1)), "x-vs-baseline")
}
