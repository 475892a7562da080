package e2e

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func scrape(t *testing.T, url string) string {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func metricValue(t *testing.T, text, name string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+]+)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("metric %s not found in:\n%s", name, text)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestMetrics scrapes the daemon's Prometheus endpoint and checks that the counters
// match what the test did: one failed and one good attach, bytes read, one detach.
func TestMetrics(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	addr := freePort(t)
	d := startDaemon(t, dir, "--metrics-addr", addr)
	defer d.stop(t)
	url := "http://" + addr + "/metrics"

	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"lowers":[{"file":"/nonexistent"}]}`), 0o644)
	if _, err := d.obd(t, "attach", "--frontend", "fuse", "--config", bad); err == nil {
		t.Fatal("bad attach succeeded")
	}
	out, err := d.obd(t, "attach", "--frontend", "fuse", "--config", helloConfig(t, dir, ""))
	if err != nil {
		t.Fatal(err, out)
	}
	img := firstLine(out)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3 << 20
	if _, err := io.CopyN(io.Discard, f, n); err != nil {
		t.Fatal(err)
	}
	f.Close()
	text := scrape(t, url)
	if v := metricValue(t, text, `obd_attaches_total{frontend="fuse",result="ok"}`); v != 1 {
		t.Errorf("ok attaches %v", v)
	}
	if v := metricValue(t, text, `obd_attaches_total{frontend="fuse",result="error"}`); v != 1 {
		t.Errorf("failed attaches %v", v)
	}
	if v := metricValue(t, text, `obd_devices{frontend="fuse"}`); v != 1 {
		t.Errorf("devices %v", v)
	}
	// The page cache and read-ahead may read more than we did, never less.
	if v := metricValue(t, text, `obd_device_read_bytes_total{device="`+img+`",id="0"}`); v < n {
		t.Errorf("device read bytes %v, want >= %d", v, n)
	}
	if _, err := d.obd(t, "detach", img); err != nil {
		t.Fatal(err)
	}
	text = scrape(t, url)
	if v := metricValue(t, text, "obd_detaches_total"); v != 1 {
		t.Errorf("detaches %v", v)
	}
	if strings.Contains(text, `obd_device_read_bytes_total{`) {
		t.Error("a detached device is still reported")
	}
}
