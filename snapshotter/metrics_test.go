package snapshotter

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/snapshots"
)

// metricValue returns the value of the sample "name{labels}" in a text exposition.
func metricValue(t *testing.T, body, sample string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no sample %s in\n%s", sample, body)
	return 0
}

// TestMetricsExporter: exporterConfig serves the snapshotter's own metrics at
// uriPrefix: snapshot counts, attaches and detaches, call latencies and errors.
func TestMetricsExporter(t *testing.T) {
	needRoot(t)
	sn, _ := newTestSnapshotter(t, func(c *BootConfig) {
		c.AutoRemoveDev = true
		c.Exporter = ExporterConfig{Enable: true, URIPrefix: "/snapshotter-metrics", Port: 9863}
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- sn.ServeMetrics(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()

	api := sn.Instrumented()
	prepareRemote(t, sn, "", "chain1", "sha256:"+strings.Repeat("1", 64))
	if _, err := api.Prepare(ctx, "c1", "chain1"); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Prepare(ctx, "c2", "chain1"); err != nil {
		t.Fatal(err)
	}
	if err := api.Remove(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	labels := remoteLabels("127.0.0.1:5000/library/hello:v1", "sha256:"+strings.Repeat("2", 64), "chain2")
	labels[LabelBlobSize] = "-1"
	if _, err := api.Prepare(ctx, "extract-1 chain2", "", snapshots.WithLabels(labels)); err == nil {
		t.Fatal("Prepare with a bad blob-size succeeded")
	}

	scrape := func() string {
		resp, err := http.Get("http://" + l.Addr().String() + "/snapshotter-metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", resp.Request.URL, resp.Status)
		}
		return string(b)
	}
	body := scrape()
	for sample, want := range map[string]float64{
		`obd_snapshotter_snapshots{kind="active"}`:                      1, // c2
		`obd_snapshotter_snapshots{kind="committed"}`:                   1,
		`obd_snapshotter_devices`:                                       1,
		`obd_snapshotter_device_attaches_total{result="ok"}`:            1,
		`obd_snapshotter_device_attach_duration_seconds_count`:          1,
		`obd_snapshotter_call_duration_seconds_count{method="Prepare"}`: 3,
		`obd_snapshotter_call_duration_seconds_count{method="Remove"}`:  1,
		`obd_snapshotter_call_errors_total{method="Prepare"}`:           1,
	} {
		if got := metricValue(t, body, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	if err := api.Remove(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	body = scrape()
	for sample, want := range map[string]float64{
		`obd_snapshotter_device_detaches_total{result="ok"}`:   1,
		`obd_snapshotter_device_detach_duration_seconds_count`: 1,
		`obd_snapshotter_devices`:                              0,
		`obd_snapshotter_snapshots{kind="active"}`:             0,
	} {
		if got := metricValue(t, body, sample); got != want {
			t.Errorf("after the last container's removal: %s = %v, want %v", sample, got, want)
		}
	}
}
