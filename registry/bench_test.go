package registry

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

// BenchmarkHighLatencyReads reads 32 × 64 KiB ranges through a proxy adding 10 ms
// per request, serially (the baseline, measured in the same run) and with 16
// readers in parallel, and reports the speed-up: the shared transport must keep
// enough connections alive for parallel range reads.
func BenchmarkHighLatencyReads(b *testing.B) {
	reg := registrytest.New(b)
	gen := registrytest.OverlaybdImage(b, 9, 4<<20)
	reg.PushImage(b, "gen", "v1", gen.Image)
	p := registrytest.NewFaultProxy(b, reg.URL)
	p.SetLatency(10 * time.Millisecond)
	c, err := NewClient(Options{Keychain: anonymousKeychain{}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	d, _ := gen.Image.Layers()
	dg, _ := d[0].Digest()
	blob, err := c.OpenBlob(context.Background(), p.URL+"/v2/gen/blobs/"+dg.String(), 4<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer blob.Close()
	const chunks, size, readers = 32, 64 << 10, 16
	read := func(i int) {
		buf := make([]byte, size)
		if _, err := blob.ReadAt(buf, int64(i)*size); err != nil {
			b.Error(err)
		}
	}
	var serial, parallel time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		start := time.Now()
		for i := 0; i < chunks; i++ {
			read(i)
		}
		serial += time.Since(start)

		start = time.Now()
		var wg sync.WaitGroup
		next := make(chan int, chunks)
		for i := 0; i < chunks; i++ {
			next <- i
		}
		close(next)
		for r := 0; r < readers; r++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					read(i)
				}
			}()
		}
		wg.Wait()
		parallel += time.Since(start)
	}
	b.ReportMetric(float64(serial)/float64(parallel), "x-vs-serial")
	b.ReportMetric(float64(p.Total())/float64(2*chunks*b.N), "requests/read")
}
