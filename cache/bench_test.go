package cache

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkCachedRead measures the hit path: random 4 KiB reads of a fully cached
// blob against the same reads from a plain local file holding the same bytes,
// timed alternately in the same run. x-vs-baseline is cached/plain time per read.
func BenchmarkCachedRead(b *testing.B) {
	for _, bc := range []struct {
		name  string
		align int64
	}{{"aligned", 4096}, {"unaligned", 1}} {
		b.Run(bc.name, func(b *testing.B) {
			const size = 32 << 20
			dir := b.TempDir()
			src := newSource(50, size)
			o := testOptions()
			o.RefillSize, o.MaxFetchSize = DefaultRefillSize, DefaultMaxFetchSize
			c := openCache(b, filepath.Join(dir, "cache"), o)
			blob := openBlob(b, c, testKey, src)
			readAll(b, blob, src.data, 1<<20)
			plainPath := filepath.Join(dir, "plain")
			if err := os.WriteFile(plainPath, src.data, 0o644); err != nil {
				b.Fatal(err)
			}
			plain, err := os.Open(plainPath)
			if err != nil {
				b.Fatal(err)
			}
			defer plain.Close()
			r := rand.New(rand.NewPCG(1, 2))
			offs := make([]int64, 4096)
			for i := range offs {
				offs[i] = r.Int64N(size-4096) / bc.align * bc.align
			}
			buf := make([]byte, 4096)
			calls := src.calls.Load()
			b.ResetTimer()
			base, cached := interleave(b.N,
				func(i int) { plain.ReadAt(buf, offs[i%len(offs)]) },
				func(i int) {
					if _, err := blob.ReadAt(buf, offs[i%len(offs)]); err != nil {
						b.Fatal(err)
					}
				})
			b.StopTimer()
			if src.calls.Load() != calls {
				b.Fatal("hit path benchmark fetched from the source")
			}
			b.SetBytes(4096)
			b.ReportMetric(float64(base.Nanoseconds()), "ns/plain-read")
			b.ReportMetric(float64(cached.Nanoseconds()), "ns/cached-read")
			b.ReportMetric(float64(cached)/float64(max(base, 1)), "x-vs-baseline")
		})
	}
}

// interleave runs fa and fb n times each, alternating in chunks so that load from
// other processes affects both alike, and returns the time per call of each.
func interleave(n int, fa, fb func(i int)) (ta, tb time.Duration) {
	const chunk = 256
	for i := 0; i < n; i += chunk {
		k := min(chunk, n-i)
		start := time.Now()
		for j := 0; j < k; j++ {
			fa(i + j)
		}
		ta += time.Since(start)
		start = time.Now()
		for j := 0; j < k; j++ {
			fb(i + j)
		}
		tb += time.Since(start)
	}
	return ta / time.Duration(max(n, 1)), tb / time.Duration(max(n, 1))
}
