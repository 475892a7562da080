package remote

import (
	"context"
	"testing"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/registry/registrytest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// metricSum gathers c and sums the samples of name whose labels include want.
func metricSum(t *testing.T, c prometheus.Collector, name string, want map[string]string) float64 {
	t.Helper()
	r := prometheus.NewRegistry()
	r.MustRegister(c)
	fams, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for k, v := range want {
				if !hasLabel(m, k, v) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

// The opener's metrics count what the test did: requests and their latencies as
// the proxy saw them, one retry per injected fault, registry bytes equal to what
// the cache fetched, hits on a second read of the same bytes.
func TestMetricsMatchActivity(t *testing.T) {
	reg := registrytest.New(t)
	g := registrytest.OverlaybdImage(t, 3, 3<<20)
	reg.PushImage(t, "m", "latest", g.Image)
	p := registrytest.NewFaultProxy(t, reg.URL)
	op := newOpener(t, t.TempDir(), cache.Options{ReadAhead: -1})
	defer op.Close()
	cfg, err := op.Config(context.Background(), p.Host+"/m:latest")
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Lowers[0]
	u, _ := cfg.BlobURL(l.Digest)
	// The open's two reads (head and tail, at once) pass, the first fill after is cut.
	p.SetPlan(registrytest.Sequence(registrytest.None, registrytest.None, registrytest.ResetMidBody))
	b, err := op.OpenBlob(context.Background(), u, config.Layer{Digest: l.Digest, Size: l.Size})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	read := func(off int64, n int) {
		if _, err := b.ReadAt(make([]byte, n), off); err != nil {
			t.Fatal(err)
		}
	}
	read(0, 100<<10)
	read(1<<20, 64<<10)
	c := op.Collector()
	if got := metricSum(t, c, "obd_registry_retries_total", nil); got != float64(p.Injected(registrytest.ResetMidBody)) || got != 1 {
		t.Errorf("retries %v; the proxy injected %d faults", got, p.Injected(registrytest.ResetMidBody))
	}
	// Since SetPlan the proxy saw only ranged blob GETs (the open's head and
	// tail, the cut fill, its retry; the first read hits the head): each a 206.
	if got, want := metricSum(t, c, "obd_registry_requests_total", map[string]string{"code": "206"}), float64(p.Total()); got != want || want != 4 {
		t.Errorf("206 responses %v; the proxy saw %v blob requests, want 4", got, want)
	}
	if got, want := metricSum(t, c, "obd_registry_request_duration_seconds", map[string]string{"host": p.Host}),
		metricSum(t, c, "obd_registry_requests_total", map[string]string{"host": p.Host}); got != want || got == 0 {
		t.Errorf("latency samples %v; requests %v", got, want)
	}
	fetched := metricSum(t, c, "obd_fetched_bytes_total", map[string]string{"source": "registry"})
	cached := metricSum(t, c, "obd_cache_fetched_bytes_total", nil)
	// The registry delivered every byte the cache fetched, and nothing else.
	if fetched != cached || cached < 164<<10 {
		t.Errorf("registry bytes %v, cache fetched %v", fetched, cached)
	}
	// The open's reads of head and tail are served too.
	opened := float64(openHead + openTail(int64(l.Size)))
	if got := metricSum(t, c, "obd_cache_served_bytes_total", nil); got != opened+164<<10 {
		t.Errorf("served %v bytes; open read %v, then read %d", got, opened, 164<<10)
	}
	hits0, misses0 := metricSum(t, c, "obd_cache_hits_total", nil), metricSum(t, c, "obd_cache_misses_total", nil)
	if misses0 == 0 {
		t.Error("no misses after cold reads")
	}
	read(0, 100<<10)
	if got := metricSum(t, c, "obd_cache_hits_total", nil); got <= hits0 {
		t.Errorf("hits %v after re-reading cached bytes (before %v)", got, hits0)
	}
	if got := metricSum(t, c, "obd_cache_fetched_bytes_total", nil); got != cached {
		t.Errorf("re-reading cached bytes fetched %v more", got-cached)
	}
	// Counters survive the blob's close.
	b.Close()
	if got := metricSum(t, c, "obd_cache_served_bytes_total", nil); got != opened+264<<10 {
		t.Errorf("after close: served %v", got)
	}
}
