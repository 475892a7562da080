package lsmt

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

// benchSegments builds n sorted segments with random lengths and gaps.
func benchSegments(n int) []Segment {
	r := rand.New(rand.NewPCG(1, 2))
	segs := make([]Segment, n)
	off := uint64(0)
	for i := range segs {
		off += uint64(r.IntN(64))
		l := uint32(1 + r.IntN(256))
		segs[i] = Segment{Offset: off, Length: l, MOffset: off + 8}
		off += uint64(l)
	}
	return segs
}

func lookupQueries(segs []Segment, n int) []uint64 {
	r := rand.New(rand.NewPCG(3, 4))
	start, end := segs[0].Offset, segs[len(segs)-1].End()
	q := make([]uint64, n)
	for i := range q {
		q[i] = start + r.Uint64N(end-start)
	}
	return q
}

func sortSearchFind(segs []Segment, x uint64) int {
	return sort.Search(len(segs), func(i int) bool { return segs[i].End() > x })
}

// BenchmarkLookup compares Index.Find with sort.Search over the same []Segment and the
// same random query stream. Each sub-benchmark times both in the same run (ns/op is
// Index.Find) and reports x-vs-baseline (Index speed / sort.Search speed), lookups/s
// and ns/lookup of Index, and baseline-ns/lookup.
func BenchmarkLookup(b *testing.B) {
	cases := []struct {
		n    int
		wide bool // offsets past 2^31 sectors: 64-bit keys
	}{{1_000, false}, {100_000, false}, {1_000_000, false}, {1_000_000, true}}
	for _, c := range cases {
		name := fmt.Sprintf("segments=%d", c.n)
		if c.wide {
			name += "/64bit-keys"
		}
		b.Run(name, func(b *testing.B) {
			segs := benchSegments(c.n)
			if c.wide {
				for i := range segs {
					segs[i].Offset += 1 << 40
				}
			}
			x := NewIndex(segs)
			q := lookupQueries(segs, 1<<16)
			const mask = 1<<16 - 1
			// Two long phases over the same queries, each after an untimed warm-up pass,
			// so each structure is measured in its steady state (alternating small
			// blocks would measure the two evicting each other's working set).
			sink := 0
			for i := range q {
				sink += sortSearchFind(segs, q[i])
			}
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				sink += sortSearchFind(segs, q[i&mask])
			}
			base := time.Since(t0)
			for i := range q {
				sink += x.Find(q[i])
			}
			b.ResetTimer()
			t1 := time.Now()
			for i := 0; i < b.N; i++ {
				sink += x.Find(q[i&mask])
			}
			ours := time.Since(t1)
			b.StopTimer()
			if sink == -1 {
				b.Log(sink)
			}
			if ours > 0 {
				b.ReportMetric(float64(base)/float64(ours), "x-vs-baseline")
				b.ReportMetric(float64(b.N)/ours.Seconds(), "lookups/s")
				b.ReportMetric(float64(ours.Nanoseconds())/float64(b.N), "ns/lookup")
				b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "baseline-ns/lookup")
			}
		})
	}
}

// BenchmarkReadAt reads 4 KiB blocks at random aligned offsets through a stack of two
// sealed layers under a writable upper (files on disk), against pread of the same
// blocks from a raw disk image file holding the same bytes (x-vs-rawfile: raw time /
// stacked time, so 1 means no overhead).
func BenchmarkReadAt(b *testing.B) {
	const size = 64 << 20
	st := newRandomStack(b, 3, size, 200, 7)
	im := st.image(b, true)
	raw, err := os.Create(filepath.Join(b.TempDir(), "raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.WriteAt(st.model, 0); err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	buf := make([]byte, 4096)
	offs := make([]int64, 1<<12)
	for i := range offs {
		offs[i] = int64(r.IntN(size/4096)) * 4096
	}
	const block = 1024
	var base, ours time.Duration
	b.SetBytes(4096)
	b.ResetTimer()
	for done := 0; done < b.N; done += block {
		k := min(block, b.N-done)
		t0 := time.Now()
		for i := done; i < done+k; i++ {
			if _, err := raw.ReadAt(buf, offs[i&(len(offs)-1)]); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		for i := done; i < done+k; i++ {
			if _, err := im.ReadAt(buf, offs[i&(len(offs)-1)]); err != nil {
				b.Fatal(err)
			}
		}
		base += t1.Sub(t0)
		ours += time.Since(t1)
	}
	b.StopTimer()
	o := offs[(b.N-1)&(len(offs)-1)]
	if !bytes.Equal(buf, st.model[o:o+4096]) {
		b.Fatal("wrong data")
	}
	if ours > 0 {
		b.ReportMetric(float64(base)/float64(ours), "x-vs-rawfile")
		b.ReportMetric(float64(ours.Nanoseconds())/float64(b.N), "ns/read")
	}
}
