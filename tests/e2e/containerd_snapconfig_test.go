package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

// TestContainerdExporterAsyncRemove: the snapshotter started with exporterConfig
// serves its metrics at uriPrefix on port (attaches, snapshot counts, call
// latencies), and with asyncRemove an image's removal still releases every device
// and directory, in the background.
func TestContainerdExporterAsyncRemove(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	e := startContainerdEnv(t, map[string]any{"autoRemoveDev": true, "asyncRemove": true,
		"exporterConfig": map[string]any{"enable": true, "port": port, "uriPrefix": "/obd-metrics"}})
	reg := registrytest.New(t)
	reg.PushLayout(t, golden+"/hello-world-oci", "hello-world")
	ref := reg.Ref("hello-world:amd64-converted")
	if out, err := run(t, 2*time.Minute, bin("obd"), "rpull", "--containerd-address", e.sock, "--namespace", e.namespace, ref); err != nil {
		t.Fatalf("obd rpull: %v\n%s\n%s", err, out, e.logs())
	}
	if out := e.mustCtr(t, "run", "--snapshotter", "overlaybd", "--rm", ref, "c1"); !strings.Contains(out, "Hello from Docker!") {
		t.Fatalf("ctr run printed:\n%s", out)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/obd-metrics", port))
	if err != nil {
		t.Fatalf("scraping the snapshotter: %v\n%s", err, e.logs())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`obd_snapshotter_device_attaches_total{result="ok"} 1`, `obd_snapshotter_snapshots{kind="committed"} 1`,
		`obd_snapshotter_call_duration_seconds_count{method="Prepare"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s:\n%s", want, body)
		}
	}
	if n := e.waitDevices(t, 0); n != 0 {
		t.Errorf("%d devices after the container's removal (autoRemoveDev, asyncRemove), want 0", n)
	}
	e.mustCtr(t, "image", "rm", "--sync", ref)
	dirs := func() int {
		entries, _ := os.ReadDir(filepath.Join(e.snapRoot, "snapshots"))
		return len(entries)
	}
	for i := 0; i < 300 && dirs() != 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if n := dirs(); n != 0 {
		t.Errorf("%d snapshot directories 30 s after the image's removal (asyncRemove), want 0", n)
	}
}
