package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/obd-project/obd/registry/registrytest"
)

// TestFleetThunderingHerd: five `obd daemon` processes in peer mode attach the
// same image from one registry (behind a byte counter) at the same moment and
// read the same 120 scattered 4 KiB blocks of it concurrently. The fleet must
// take about what one node alone takes from the registry (<= 1.2x): every
// chunk, including the blob's first request and its header, trailer and index
// at open, is fetched by its owner only, and the others wait for the owner.
func TestFleetThunderingHerd(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("six daemons and a 48 MiB layer")
	}
	dir := t.TempDir()
	raw := make([]byte, 48<<20)
	rng := rand.New(rand.NewPCG(13, 3))
	for i := 0; i+8 <= len(raw); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			raw[i+j] = byte(v >> (8 * j))
		}
	}
	rawPath, layerPath := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "layer.tar")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, bin("obd"), "-q", "import", "--compress", "lz4", "--tar", rawPath, layerPath)
	blob, err := os.ReadFile(layerPath)
	if err != nil {
		t.Fatal(err)
	}
	reg := registrytest.New(t)
	reg.PushImage(t, "herd/app", "v1", registrytest.LayersImage(t, blob))
	front := registrytest.NewCountingProxy(t, reg.URL)
	ref := front.Host() + "/herd/app:v1"

	const blocks = 120
	offs := make([]int64, blocks)
	for i := range offs {
		offs[i] = rng.Int64N(int64(len(raw))/4096) * 4096
	}

	// One node alone: what a node takes from the registry.
	solo := herdFleet(t, filepath.Join(dir, "solo"), 1, "herd-token")
	before := front.BlobBytes()
	herdAttachRead(t, solo, ref, raw, offs)
	one := front.BlobBytes() - before
	for _, d := range solo {
		d.stop(t)
	}

	fleet := herdFleet(t, filepath.Join(dir, "fleet"), 5, "herd-token")
	before = front.BlobBytes()
	getsBefore := front.BlobGets()
	herdAttachRead(t, fleet, ref, raw, offs)
	all := front.BlobBytes() - before
	ratio := float64(all) / float64(one)
	var perNode []string
	for _, d := range fleet {
		text := scrape(t, "http://"+d.metrics+"/metrics")
		perNode = append(perNode, fmt.Sprintf("%.0f/%.0f", metricValue(t, text, `obd_p2p_bytes_total{source="registry"}`),
			metricValue(t, text, `obd_p2p_bytes_total{source="peer"}`)))
	}
	t.Logf("one node: %d registry bytes; 5 nodes: %d (%.2fx, %d blob GETs); per node registry/peer bytes: %s",
		one, all, ratio, front.BlobGets()-getsBefore, strings.Join(perNode, " "))
	if ratio > 1.2 {
		t.Errorf("5 nodes took %d bytes from the registry, %.2fx one node's %d; want <= 1.2x", all, ratio, one)
	}
	for _, d := range fleet {
		d.stop(t)
	}
}

type herdNode struct {
	*daemonProc
	metrics string
}

// herdFleet starts n daemons in peer mode that list each other.
func herdFleet(t *testing.T, root string, n int, token string) []*herdNode {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = freePort(t)
	}
	peers := `"` + strings.Join(addrs, `","`) + `"`
	nodes := make([]*herdNode, n)
	for i := range nodes {
		d := filepath.Join(root, fmt.Sprint(i))
		os.MkdirAll(d, 0o755)
		cfg := filepath.Join(d, "overlaybd.json")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`{"cacheConfig":{"cacheType":"file","cacheDir":%q,"cacheSizeGB":1},
			"credentialConfig":{"mode":"file","path":""},
			"p2pConfig":{"enable":true,"mode":"peers","peers":[%s],"advertise":%q,"listen":%q,"token":%q}}`,
			filepath.Join(d, "cache"), peers, addrs[i], addrs[i], token)), 0o644)
		m := freePort(t)
		nodes[i] = &herdNode{startDaemon(t, d, "--config", cfg, "--metrics-addr", m), m}
	}
	return nodes
}

// herdAttachRead attaches ref on every node at once (FUSE) and then reads the
// 4 KiB blocks at offs on every node at once, checking every byte.
func herdAttachRead(t *testing.T, nodes []*herdNode, ref string, raw []byte, offs []int64) {
	t.Helper()
	paths := make([]string, len(nodes))
	var wg sync.WaitGroup
	for i, d := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := d.obd(t, "attach", "--frontend", "fuse", ref)
			if err != nil {
				t.Errorf("attach on node %d: %v\n%s\n%s", i, err, out, d.logText())
				return
			}
			paths[i] = firstLine(out)
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	start := make(chan struct{})
	for i := range nodes {
		f, err := os.Open(paths[i])
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				buf := make([]byte, 4096)
				for j := w; j < len(offs); j += 8 {
					off := offs[j]
					if n, err := f.ReadAt(buf, off); n != len(buf) {
						t.Errorf("node %d: read at %d: %d bytes, %v", i, off, n, err)
					} else if !bytes.Equal(buf, raw[off:off+4096]) {
						t.Errorf("node %d: read at %d: WRONG BYTES", i, off)
					}
				}
			}()
		}
	}
	close(start)
	wg.Wait()
}
