package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/obd-project/obd/download"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// metrics are the daemon's own counters; per-device I/O is read from the devices at
// scrape time by deviceCollector.
type metrics struct {
	attaches       *prometheus.CounterVec // by frontend and result
	detaches       prometheus.Counter
	attachDuration prometheus.Histogram
	recovered      prometheus.Counter
	// layerDirsRemoved counts download layer directories removed by the bound.
	layerDirsRemoved prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		attaches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Name: "attaches_total",
			Help: "Device attaches, by frontend and result (ok or error)."}, []string{"frontend", "result"}),
		detaches: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "obd", Name: "detaches_total", Help: "Devices detached."}),
		attachDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "obd", Name: "attach_duration_seconds",
			Help: "Time to assemble an image and start its device.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		recovered: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "obd", Name: "devices_recovered_total",
			Help: "Devices taken back from a dead daemon at start-up."}),
		layerDirsRemoved: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "obd", Name: "layer_dirs_removed_total",
			Help: "Unused download layer directories removed to keep their total within downloadDirSizeGB."}),
	}
}

// Registry returns a Prometheus registry with the manager's metrics and the Go
// runtime's; other packages (registry, cache) add theirs to it.
func (m *Manager) Registry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(m.metrics.attaches, m.metrics.detaches, m.metrics.attachDuration, m.metrics.recovered, m.metrics.layerDirsRemoved,
		deviceCollector{m}, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	r.MustRegister(m.opts.Collectors...)
	return r
}

// deviceDescs are built on first use, not at init: every obd command links this
// package, few serve metrics.
var deviceDescs = sync.OnceValue(func() (d struct{ devices, read, written, errors, size, dlBytes, dlLayer *prometheus.Desc }) {
	d.devices = prometheus.NewDesc("obd_devices", "Devices served, by frontend.", []string{"frontend"}, nil)
	d.read = prometheus.NewDesc("obd_device_read_bytes_total", "Bytes read from a device.", []string{"id", "device"}, nil)
	d.written = prometheus.NewDesc("obd_device_written_bytes_total", "Bytes written to a device.", []string{"id", "device"}, nil)
	d.errors = prometheus.NewDesc("obd_device_io_errors_total", "Failed device requests (answered EIO), by operation.", []string{"id", "device", "op"}, nil)
	d.size = prometheus.NewDesc("obd_device_size_bytes", "Device size.", []string{"id", "device"}, nil)
	d.dlBytes = prometheus.NewDesc("obd_download_fetched_bytes_total", "Bytes the background download read from the registry, by device.", []string{"id", "device"}, nil)
	d.dlLayer = prometheus.NewDesc("obd_download_layers", "Layers of attached devices by background download state.", []string{"state"}, nil)
	return d
})

// deviceCollector reports every device's counters at scrape time.
type deviceCollector struct{ m *Manager }

func (c deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	d := deviceDescs()
	for _, d := range []*prometheus.Desc{d.devices, d.read, d.written, d.errors, d.size, d.dlBytes, d.dlLayer} {
		ch <- d
	}
}

func (c deviceCollector) Collect(ch chan<- prometheus.Metric) {
	d := deviceDescs()
	count := map[Frontend]int{FrontendUblk: 0, FrontendFUSE: 0}
	states := map[download.State]int{download.StateWaiting: 0, download.StateDownloading: 0, download.StateDone: 0, download.StateFailed: 0}
	for _, s := range c.m.List() {
		if len(s.Downloads) > 0 {
			var n int64
			for _, d := range s.Downloads {
				n += d.Fetched
				states[d.State]++
			}
			ch <- prometheus.MustNewConstMetric(d.dlBytes, prometheus.CounterValue, float64(n), strconv.Itoa(s.ID), s.Path)
		}
		count[s.Frontend]++
		id := strconv.Itoa(s.ID)
		ch <- prometheus.MustNewConstMetric(d.read, prometheus.CounterValue, float64(s.BytesRead), id, s.Path)
		ch <- prometheus.MustNewConstMetric(d.written, prometheus.CounterValue, float64(s.BytesWritten), id, s.Path)
		ch <- prometheus.MustNewConstMetric(d.errors, prometheus.CounterValue, float64(s.ReadErrors), id, s.Path, "read")
		ch <- prometheus.MustNewConstMetric(d.errors, prometheus.CounterValue, float64(s.WriteErrors), id, s.Path, "write")
		ch <- prometheus.MustNewConstMetric(d.size, prometheus.GaugeValue, float64(s.Size), id, s.Path)
	}
	for fe, n := range count {
		ch <- prometheus.MustNewConstMetric(d.devices, prometheus.GaugeValue, float64(n), string(fe))
	}
	for st, n := range states {
		ch <- prometheus.MustNewConstMetric(d.dlLayer, prometheus.GaugeValue, float64(n), string(st))
	}
}

// ServeMetrics exposes the manager's registry at addr+path until ctx ends.
func ServeMetrics(ctx context.Context, m *Manager, addr, path string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ServeMetricsOn(ctx, m, ln, path)
}

// ServeMetricsOn is ServeMetrics on a listener the caller opened (so that a bad
// address fails start-up rather than a background goroutine).
func ServeMetricsOn(ctx context.Context, m *Manager, ln net.Listener, path string) error {
	mux := http.NewServeMux()
	mux.Handle(path, promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	m.lg.Info("metrics listening", zap.String("addr", ln.Addr().String()), zap.String("path", path))
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
