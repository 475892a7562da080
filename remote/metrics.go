package remote

import (
	"strconv"
	"sync"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/registry"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics turns the registry client's events (registry.Observer) into
// Prometheus counters and reports the cache's counters at scrape time.
type metrics struct {
	requests *prometheus.CounterVec   // by host and status code ("0": transport error)
	latency  *prometheus.HistogramVec // time to response headers, by host
	fetched  *prometheus.CounterVec   // blob payload bytes, by source
	retries  *prometheus.CounterVec   // by reason
	oversize prometheus.Counter       // blobs the registry client refused for their size
	cache    func() cache.Stats
	usage    func() (int64, error)
}

var (
	_ registry.Observer         = (*metrics)(nil)
	_ registry.OversizeObserver = (*metrics)(nil)
)

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Name: "registry_requests_total",
			Help: "HTTP requests to registries and blob storage, by host and status code (0: transport error)."}, []string{"host", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "obd", Name: "registry_request_duration_seconds",
			Help: "Time from request to response headers.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"host"}),
		fetched: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Name: "fetched_bytes_total",
			Help: "Blob bytes fetched, by source."}, []string{"source"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Name: "registry_retries_total",
			Help: "Blob reads tried again, by reason."}, []string{"reason"}),
		oversize: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "obd", Name: "registry_oversize_refused_total",
			Help: "Blobs refused because their size (manifest, config or registry answer) exceeds the limit."}),
	}
}

func (m *metrics) Request(host string, status int, latency time.Duration) {
	m.requests.WithLabelValues(host, strconv.Itoa(status)).Inc()
	m.latency.WithLabelValues(host).Observe(latency.Seconds())
}

func (m *metrics) Bytes(n int64) { m.fetched.WithLabelValues("registry").Add(float64(n)) }

func (m *metrics) Retry(reason string, _ time.Duration) { m.retries.WithLabelValues(reason).Inc() }

func (m *metrics) OversizeRefused() { m.oversize.Inc() }

// cacheDescs are built on first use, not at init: every obd command links this
// package, few serve metrics.
var cacheDescs = sync.OnceValue(func() (d struct{ hits, misses, served, fetched, evictions, refetches, crc, stale, oversize, usage *prometheus.Desc }) {
	d.hits = prometheus.NewDesc("obd_cache_hits_total", "Read pieces served from the extent cache.", nil, nil)
	d.misses = prometheus.NewDesc("obd_cache_misses_total", "Read pieces that waited for a fetch.", nil, nil)
	d.served = prometheus.NewDesc("obd_cache_served_bytes_total", "Bytes returned by cached blobs.", nil, nil)
	d.fetched = prometheus.NewDesc("obd_cache_fetched_bytes_total", "Bytes the extent cache fetched from its sources.", nil, nil)
	d.evictions = prometheus.NewDesc("obd_cache_evictions_total", "Cache units dropped (CRC self-healing or capacity).", nil, nil)
	d.refetches = prometheus.NewDesc("obd_cache_refetches_total", "Fetches of units dropped after a ZFile block CRC failure.", nil, nil)
	d.crc = prometheus.NewDesc("obd_cache_crc_failures_total", "Cached pages that failed their CRC and were fetched again.", nil, nil)
	d.stale = prometheus.NewDesc("obd_cache_stale_evicts_total", "Evicts that dropped nothing: the caller had read a copy already replaced.", nil, nil)
	d.oversize = prometheus.NewDesc("obd_cache_oversize_refused_total", "Blobs the cache refused to open for their size.", nil, nil)
	d.usage = prometheus.NewDesc("obd_cache_usage_bytes", "Disk space the extent cache uses.", nil, nil)
	return d
})

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.latency.Describe(ch)
	m.fetched.Describe(ch)
	m.retries.Describe(ch)
	m.oversize.Describe(ch)
	d := cacheDescs()
	for _, d := range []*prometheus.Desc{d.hits, d.misses, d.served, d.fetched, d.evictions, d.refetches, d.crc, d.stale, d.oversize, d.usage} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.latency.Collect(ch)
	m.fetched.Collect(ch)
	m.retries.Collect(ch)
	m.oversize.Collect(ch)
	if m.cache == nil {
		return
	}
	s, d := m.cache(), cacheDescs()
	for _, v := range []struct {
		d *prometheus.Desc
		n int64
	}{{d.hits, s.Hits}, {d.misses, s.Misses}, {d.served, s.BytesServed}, {d.fetched, s.BytesFetched},
		{d.evictions, s.Evictions}, {d.refetches, s.Refetches}, {d.crc, s.ChecksumFailures},
		{d.stale, s.StaleEvicts}, {d.oversize, s.OversizeRefused}} {
		ch <- prometheus.MustNewConstMetric(v.d, prometheus.CounterValue, float64(v.n))
	}
	if u, err := m.usage(); err == nil {
		ch <- prometheus.MustNewConstMetric(d.usage, prometheus.GaugeValue, float64(u))
	}
}
