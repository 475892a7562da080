package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/storage"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// metrics are the snapshotter's own (exporterConfig): ACI's per-call latency and
// error counts, device attaches and detaches, and, read at scrape time, the
// snapshots by kind and the devices attached.
type metrics struct {
	calls    *prometheus.HistogramVec // by snapshots API method
	errors   *prometheus.CounterVec   // by method
	attaches *prometheus.CounterVec   // by result
	detaches *prometheus.CounterVec   // by result
	attachD  prometheus.Histogram
	detachD  prometheus.Histogram
}

func newMetrics() *metrics {
	buckets := prometheus.ExponentialBuckets(0.001, 2, 16)
	return &metrics{
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "obd", Subsystem: "snapshotter", Name: "call_duration_seconds",
			Help: "Time of the snapshots API calls, by method.", Buckets: buckets}, []string{"method"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Subsystem: "snapshotter", Name: "call_errors_total",
			Help: "Failed snapshots API calls (and background removals, as Remove), by method."}, []string{"method"}),
		attaches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Subsystem: "snapshotter", Name: "device_attaches_total",
			Help: "Devices asked of the device manager, by result (ok or error)."}, []string{"result"}),
		detaches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Subsystem: "snapshotter", Name: "device_detaches_total",
			Help: "Devices released to the device manager, by result (ok or error)."}, []string{"result"}),
		attachD: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "obd", Subsystem: "snapshotter", Name: "device_attach_duration_seconds",
			Help: "Time the device manager took to attach a device.", Buckets: buckets}),
		detachD: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "obd", Subsystem: "snapshotter", Name: "device_detach_duration_seconds",
			Help: "Time the device manager took to detach a device.", Buckets: buckets}),
	}
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// meteredDevices counts and times what the device manager is asked.
type meteredDevices struct {
	Devices
	m *metrics
}

func (m *metrics) devices(d Devices) Devices { return meteredDevices{d, m} }

func (d meteredDevices) Attach(ctx context.Context, configPath string) (string, string, error) {
	start := time.Now()
	id, path, err := d.Devices.Attach(ctx, configPath)
	d.m.attachD.Observe(time.Since(start).Seconds())
	d.m.attaches.WithLabelValues(result(err)).Inc()
	return id, path, err
}

func (d meteredDevices) Detach(ctx context.Context, id string) error {
	start := time.Now()
	err := d.Devices.Detach(ctx, id)
	d.m.detachD.Observe(time.Since(start).Seconds())
	d.m.detaches.WithLabelValues(result(err)).Inc()
	return err
}

var (
	descSnapshots = prometheus.NewDesc("obd_snapshotter_snapshots", "Snapshots, by kind (active, view, committed).", []string{"kind"}, nil)
	descDevices   = prometheus.NewDesc("obd_snapshotter_devices", "Snapshots with a device attached.", nil, nil)
)

// stateCollector reads the snapshot counts and attached devices at scrape time.
type stateCollector struct{ s *Snapshotter }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSnapshots
	ch <- descDevices
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	kinds := map[snapshots.Kind]float64{snapshots.KindActive: 0, snapshots.KindView: 0, snapshots.KindCommitted: 0}
	err := c.s.ms.WithTransaction(context.Background(), false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(_ context.Context, info snapshots.Info) error {
			kinds[info.Kind]++
			return nil
		})
	})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descSnapshots, err)
	} else {
		for k, n := range kinds {
			ch <- prometheus.MustNewConstMetric(descSnapshots, prometheus.GaugeValue, n, strings.ToLower(k.String()))
		}
	}
	recs, _ := filepath.Glob(filepath.Join(c.s.root, "snapshots", "*", "block", "device.json"))
	ch <- prometheus.MustNewConstMetric(descDevices, prometheus.GaugeValue, float64(len(recs)))
}

// Registry returns a registry with the snapshotter's metrics and the process's.
func (s *Snapshotter) Registry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	m := s.metrics
	r.MustRegister(m.calls, m.errors, m.attaches, m.detaches, m.attachD, m.detachD, stateCollector{s},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return r
}

// ServeMetrics serves the registry at exporterConfig.uriPrefix on l until ctx ends.
func (s *Snapshotter) ServeMetrics(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle(s.cfg.Exporter.URIPrefix, promhttp.HandlerFor(s.Registry(), promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	zap.L().Info("snapshotter metrics served", zap.String("address", l.Addr().String()), zap.String("uriPrefix", s.cfg.Exporter.URIPrefix))
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics exporter: %w", err)
	}
	return nil
}

// MetricsAddress is where exporterConfig asks the metrics to be served (all
// interfaces, as ACI).
func (c *BootConfig) MetricsAddress() string { return fmt.Sprintf(":%d", c.Exporter.Port) }

// Instrumented returns the snapshotter with every call timed and its errors
// counted; it is what the gRPC service serves.
func (s *Snapshotter) Instrumented() snapshots.Snapshotter { return instrumented{s} }

type instrumented struct{ s *Snapshotter }

func (i instrumented) observe(method string, start time.Time, err error) {
	i.s.metrics.calls.WithLabelValues(method).Observe(time.Since(start).Seconds())
	// A remote layer's Prepare answers ErrAlreadyExists by design.
	if err != nil && !(method == "Prepare" && errdefs.IsAlreadyExists(err)) {
		i.s.metrics.errors.WithLabelValues(method).Inc()
	}
}

func (i instrumented) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	defer func(start time.Time) { i.observe("Stat", start, err) }(time.Now())
	return i.s.Stat(ctx, key)
}

func (i instrumented) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (_ snapshots.Info, err error) {
	defer func(start time.Time) { i.observe("Update", start, err) }(time.Now())
	return i.s.Update(ctx, info, fieldpaths...)
}

func (i instrumented) Usage(ctx context.Context, key string) (_ snapshots.Usage, err error) {
	defer func(start time.Time) { i.observe("Usage", start, err) }(time.Now())
	return i.s.Usage(ctx, key)
}

func (i instrumented) Mounts(ctx context.Context, key string) (_ []mount.Mount, err error) {
	defer func(start time.Time) { i.observe("Mounts", start, err) }(time.Now())
	return i.s.Mounts(ctx, key)
}

func (i instrumented) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) (_ []mount.Mount, err error) {
	defer func(start time.Time) { i.observe("Prepare", start, err) }(time.Now())
	return i.s.Prepare(ctx, key, parent, opts...)
}

func (i instrumented) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) (_ []mount.Mount, err error) {
	defer func(start time.Time) { i.observe("View", start, err) }(time.Now())
	return i.s.View(ctx, key, parent, opts...)
}

func (i instrumented) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) (err error) {
	defer func(start time.Time) { i.observe("Commit", start, err) }(time.Now())
	return i.s.Commit(ctx, name, key, opts...)
}

func (i instrumented) Remove(ctx context.Context, key string) (err error) {
	defer func(start time.Time) { i.observe("Remove", start, err) }(time.Now())
	return i.s.Remove(ctx, key)
}

func (i instrumented) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) (err error) {
	defer func(start time.Time) { i.observe("Walk", start, err) }(time.Now())
	return i.s.Walk(ctx, fn, filters...)
}

// Cleanup implements snapshots.Cleaner (containerd's garbage collection calls it).
func (i instrumented) Cleanup(ctx context.Context) (err error) {
	defer func(start time.Time) { i.observe("Cleanup", start, err) }(time.Now())
	return i.s.Cleanup(ctx)
}

func (i instrumented) Close() error { return i.s.Close() }
