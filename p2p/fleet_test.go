package p2p_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/p2p"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
	"github.com/obd-project/obd/remote"
)

type node struct {
	addr string
	op   *remote.Opener
	m    *p2p.Metrics
	srv  *http.Server
	blob image.Blob
}

// startFleet starts n nodes on 127.0.0.1, each with its own cache directory and
// peer server, all listing all.
func startFleet(t testing.TB, n int, token string, fanOut int) []*node {
	t.Helper()
	lns := make([]interface{ Close() error }, n)
	nodes := make([]*node, n)
	var peers []string
	for i := range nodes {
		ln := listen(t)
		lns[i] = ln
		nodes[i] = &node{addr: ln.Addr().String(), m: p2p.NewMetrics()}
		peers = append(peers, nodes[i].addr)
		defer func() {
			nd := nodes[i]
			nd.op = newOpener(t, t.TempDir(), config.P2PConfig{Enable: true, Mode: config.P2PModePeers,
				Peers: peers, Advertise: nd.addr, Token: token, FanOut: fanOut}, nd.m)
			nd.srv = &http.Server{Handler: nd.op.PeerServer()}
			go nd.srv.Serve(ln)
			t.Cleanup(func() { nd.srv.Close() })
		}()
	}
	return nodes
}

// TestFleet: five nodes read the same scattered working set; the registry sends
// it about once, not five times. Then two peers die mid-run: reads stay correct,
// and the survivors count fallbacks. Fan-out 8 makes every chunk's owner serve
// the other four; fan-out 2 makes two of them relays.
func TestFleet(t *testing.T) {
	for _, fo := range []int{8, 2} {
		t.Run(fmt.Sprintf("fanout%d", fo), func(t *testing.T) { testFleet(t, fo) })
	}
}

func testFleet(t *testing.T, fanOut int) {
	reg := registrytest.New(t)
	front := registrytest.NewCountingProxy(t, reg.URL)
	data := randomData(1, 48<<20)
	l := pushBlob(t, reg, "fleet/app", data)
	blobURL := front.URL + "/v2/fleet/app/blobs/" + l.Digest

	nodes := startFleet(t, 5, "fleet-secret", fanOut)
	for _, nd := range nodes {
		nd.blob = openBlob(t, nd.op, blobURL, l)
	}
	spans, ws := scattered(7, int64(len(data)), 96)
	var wg sync.WaitGroup
	for _, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f := readAll(t, nd.blob, data, spans, 8, nil); f != 0 {
				t.Errorf("node %s: %d reads failed", nd.addr, f)
			}
		}()
	}
	wg.Wait()
	egress := front.BlobBytes()
	var fromPeers, fromReg float64
	for _, nd := range nodes {
		fromPeers += counterValue(t, nd.m, "bytes", "peer")
		fromReg += counterValue(t, nd.m, "bytes", "registry")
	}
	t.Logf("working set %d bytes; registry egress %d bytes (%.2fx, %d GETs); from peers %.0f, from registry %.0f",
		ws, egress, float64(egress)/float64(ws), front.BlobGets(), fromPeers, fromReg)
	if float64(egress) > 1.2*float64(ws) {
		t.Errorf("registry egress %d bytes is %.2fx the %d-byte working set; want <= 1.2x", egress, float64(egress)/float64(ws), ws)
	}
	if fromPeers < 3*float64(ws) {
		t.Errorf("peers delivered %.0f bytes; want at least 3x the working set %d", fromPeers, ws)
	}

	// Phase 2: a new working set; two nodes die a third of the way through.
	spans2, ws2 := scattered(8, int64(len(data)), 96)
	before := front.BlobBytes()
	var done atomic.Int64
	survivors, victims := nodes[:3], nodes[3:]
	for _, nd := range survivors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f := readAll(t, nd.blob, data, spans2, 4, &done); f != 0 {
				t.Errorf("node %s: %d reads failed after peers died", nd.addr, f)
			}
		}()
	}
	for deadline := time.Now().Add(time.Minute); done.Load() < int64(len(spans2)) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	for _, nd := range victims {
		nd.srv.Close()
	}
	wg.Wait()
	var fallbacks, perr float64
	for _, nd := range survivors {
		fallbacks += sumVec(t, nd.m, "fallbacks")
		perr += sumVec(t, nd.m, "peerErrors")
	}
	egress2 := front.BlobBytes() - before
	t.Logf("phase 2: working set %d bytes, registry egress %d (%.2fx), fallbacks %.0f, peer errors %.0f",
		ws2, egress2, float64(egress2)/float64(ws2), fallbacks, perr)
	if fallbacks == 0 || perr == 0 {
		t.Errorf("two peers died, yet the survivors counted %.0f fallbacks and %.0f peer errors", fallbacks, perr)
	}
}

// TestFleetMissingBlob: a node opens a blob the registry does not have. The
// open's first read goes to the chunk's owner, which cannot fetch it either:
// the open fails with not-found, and the owner, which did nothing wrong, is
// not penalised (that would send every chunk it owns to the registry for a while).
func TestFleetMissingBlob(t *testing.T) {
	reg := registrytest.New(t)
	data := randomData(5, 1<<20)
	l := pushBlob(t, reg, "fleet/app", data)
	nodes := startFleet(t, 3, "fleet-secret", 8)
	missing := config.Layer{Digest: "sha256:" + strings.Repeat("cd", 32), Size: l.Size}
	// A node that does not own the first chunk.
	var addrs []string
	for _, nd := range nodes {
		addrs = append(addrs, "http://"+nd.addr)
	}
	nd := nodes[0]
	if p2p.Rank(addrs, p2p.ChunkKey(missing.Digest, 0))[0] == "http://"+nd.addr {
		nd = nodes[1]
	}
	_, err := nd.op.OpenBlob(context.Background(), reg.URL+"/v2/fleet/app/blobs/"+missing.Digest, missing)
	if !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("open of a missing blob: %v, want ErrNotFound", err)
	}
	if perr := sumVec(t, nd.m, "peerErrors") - counterValue(t, nd.m, "peerErrors", "upstream"); perr != 0 {
		t.Errorf("%.0f peer errors other than upstream ones: a peer was blamed for the registry's answer", perr)
	}
	if counterValue(t, nd.m, "peerErrors", "upstream") == 0 {
		t.Error("no upstream error counted: the open did not ask the owner")
	}
}
