package remote

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/registry/registrytest"
	"go.uber.org/zap"
)

// BenchmarkColdStart times `obd attach REF` up to the first byte of a file on
// a cold cache over a link with a 50 ms round trip (and one more for each new
// connection, TCP's handshake): resolve the reference (ping, manifest), open
// both layers of the real two-layer stack (tar, ZFile header, trailer and
// index, LSMT index), and read the first 4 KiB of /hello. It reports the time,
// the time in round trips (the critical path's length), and the requests and
// connections made.
func BenchmarkColdStart(b *testing.B) {
	const rtt = 50 * time.Millisecond
	blobs := stackBlobs(b)
	want := make([]byte, 4096)
	if _, err := truth(b, blobs).ReadAt(want, helloOff); err != nil {
		b.Fatal(err)
	}
	reg := registrytest.New(b)
	pushStack(b, reg, "stack", blobs)
	sh := newShaper(b, reg.URL, rtt, 100<<20)
	sh.handshake = rtt
	ref := strings.TrimPrefix(sh.URL, "http://") + "/stack:latest"
	b.ResetTimer()
	var total time.Duration
	reqs0, conns0 := sh.reqs.Load(), sh.conns.Load()
	for i := 0; i < b.N; i++ {
		op := newOpener(b, b.TempDir(), cache.Options{})
		start := time.Now()
		cfg, err := op.Config(context.Background(), ref)
		if err != nil {
			b.Fatal(err)
		}
		im, err := image.Open(context.Background(), cfg, image.Options{Remote: op, Logger: zap.NewNop()})
		if err != nil {
			b.Fatal(err)
		}
		got := make([]byte, len(want))
		if _, err := im.ReadAt(got, helloOff); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		if !bytes.Equal(got, want) {
			b.Fatal("wrong bytes at /hello")
		}
		im.Close()
		op.Close()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(total.Milliseconds())/n, "ms-to-first-byte")
	b.ReportMetric(float64(total)/float64(rtt)/n, "round-trips")
	b.ReportMetric(float64(sh.reqs.Load()-reqs0)/n, "requests/op")
	b.ReportMetric(float64(sh.conns.Load()-conns0)/n, "connections/op")
}
