package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

// TestDaemonPeerServer: `obd daemon` in peer mode serves its cache to peers on
// p2pConfig.listen: a request without the token is refused; with it, a range of
// a registry blob comes back right (fetched from the registry, as this node owns
// every chunk of a one-node fleet); the P2P counters show on /metrics.
func TestDaemonPeerServer(t *testing.T) {
	needRoot(t)
	reg := registrytest.New(t)
	img := registrytest.OverlaybdImage(t, 21, 3<<20)
	reg.PushImage(t, "p2p/app", "v1", img.Image)
	blob := img.Blobs[0]
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	blobURL := reg.BlobURL("p2p/app", digest)

	dir := t.TempDir()
	peerAddr, metricsAddr := freePort(t), freePort(t)
	cfg := filepath.Join(dir, "overlaybd.json")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{"cacheConfig":{"cacheType":"file","cacheDir":%q,"cacheSizeGB":1},
		"credentialConfig":{"mode":"file","path":""},
		"p2pConfig":{"enable":true,"mode":"peers","peers":[%q],"advertise":%q,"listen":%q,"token":"e2e-token"}}`,
		filepath.Join(dir, "cache"), peerAddr, peerAddr, peerAddr)), 0o644)
	d := startDaemon(t, dir, "--config", cfg, "--metrics-addr", metricsAddr)
	defer d.stop(t)

	get := func(token string, first, last int) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+peerAddr+"/obd/p2p/v1/blobs/"+digest, nil)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, last))
		req.Header.Set("X-Obd-Blob-Url", blobURL)
		req.Header.Set("X-Obd-Blob-Size", fmt.Sprint(len(blob)))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		var resp *http.Response
		var err error
		for i := 0; i < 50; i++ { // the server starts alongside the daemon's socket
			if resp, err = http.DefaultClient.Do(req); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("peer server: %v\n%s", err, d.logText())
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	if resp, _ := get("wrong", 0, 9); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong token: HTTP %d, want 401", resp.StatusCode)
	}
	const first, last = 300 << 10, 700<<10 - 1
	resp, body := get("e2e-token", first, last)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, blob[first:last+1]) {
		t.Fatalf("HTTP %d, %d bytes (right: %v)\n%s", resp.StatusCode, len(body), bytes.Equal(body, blob[first:last+1]), d.logText())
	}
	// The server counts what it sent after the write returns, which may be just
	// after the client has the whole body: wait a little for the counter.
	var text string
	var up float64
	for i := 0; i < 50; i++ {
		text = scrape(t, "http://"+metricsAddr+"/metrics")
		if up = metricValue(t, text, "obd_p2p_uploaded_bytes_total"); up == last-first+1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if up != last-first+1 {
		t.Errorf("uploaded bytes %v, want %d", up, last-first+1)
	}
	if v := metricValue(t, text, `obd_p2p_bytes_total{source="registry"}`); v < last-first+1 {
		t.Errorf("registry bytes %v, want >= %d", v, last-first+1)
	}
}
