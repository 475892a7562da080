package p2p_test

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/p2p"
	"github.com/obd-project/obd/registry/registrytest"
	"go.uber.org/zap"
)

// BenchmarkFleetEgress: a thundering herd. Five peer-mode nodes (the remote
// opener's defaults: read-ahead on) open the same cold blob at the same
// moment and read the same 120 scattered 4 KiB blocks at once; one node alone
// does the same first. It reports the registry egress of the five as a
// multiple of one node's (the target is <= 1.2; each chunk fetched by its
// owner alone gives 1.0) and the registry's blob requests per node.
func BenchmarkFleetEgress(b *testing.B) {
	reg := registrytest.New(b)
	front := registrytest.NewCountingProxy(b, reg.URL)
	data := randomData(3, 48<<20)
	l := pushBlob(b, reg, "herd/app", data)
	blobURL := front.URL + "/v2/herd/app/blobs/" + l.Digest
	rng := rand.New(rand.NewPCG(13, 3))
	spans := make([]span, 120)
	for i := range spans {
		spans[i] = span{rng.Int64N(int64(len(data))/4096) * 4096, 4096}
	}
	// run opens the blob on n fresh nodes at once, reads spans on all at once,
	// and returns the registry's blob bytes and requests.
	run := func(n int) (int64, int64) {
		nodes := make([]*node, n)
		addrs := make([]string, n)
		lns := make([]net.Listener, n)
		for i := range nodes {
			lns[i] = listen(b)
			addrs[i] = lns[i].Addr().String()
			nodes[i] = &node{addr: addrs[i], m: p2p.NewMetrics()}
		}
		for i, nd := range nodes {
			nd.op = newOpenerCache(b, b.TempDir(), config.P2PConfig{Enable: true, Mode: config.P2PModePeers,
				Peers: addrs, Advertise: nd.addr, Token: "herd"}, nd.m, cache.Options{RefillSize: unit, Logger: zap.NewNop()})
			nd.srv = &http.Server{Handler: nd.op.PeerServer()}
			go nd.srv.Serve(lns[i])
		}
		bytes0, gets0 := front.BlobBytes(), front.BlobGets()
		var wg sync.WaitGroup
		for _, nd := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				blob, err := nd.op.OpenBlob(context.Background(), blobURL, l)
				if err != nil {
					b.Error(err)
					return
				}
				defer blob.Close()
				if f := readAll(b, blob, data, spans, 8, nil); f != 0 {
					b.Errorf("node %s: %d reads failed", nd.addr, f)
				}
			}()
		}
		wg.Wait()
		for _, nd := range nodes {
			nd.srv.Close()
			nd.op.Close()
		}
		return front.BlobBytes() - bytes0, front.BlobGets() - gets0
	}
	b.ResetTimer()
	var one, five, gets int64
	for i := 0; i < b.N; i++ {
		o, _ := run(1)
		f, g := run(5)
		one, five, gets = one+o, five+f, gets+g
	}
	b.ReportMetric(float64(five)/float64(one), "egress-x-one-node")
	b.ReportMetric(float64(gets)/float64(b.N)/5, "registry-GETs/node")
}
