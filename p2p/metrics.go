package p2p

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the P2P counters; the daemon registers them (Collectors). One
// Metrics is shared by the proxy, peer client and peer server of a process.
type Metrics struct {
	// Bytes is blob payload delivered to this node, by source: "registry"
	// (directly), "peer" or "proxy".
	Bytes *prometheus.CounterVec
	// PeerErrors counts failed peer requests, by reason (connect, status,
	// framing, timeout, bad-data: a chunk a peer served later failed its check;
	// upstream: the peer could not fetch the chunk itself, which is not held
	// against it).
	PeerErrors *prometheus.CounterVec
	// Fallbacks counts requests that went on to the next source, by what failed
	// ("proxy", "peer") and where they went ("peer", "registry").
	Fallbacks *prometheus.CounterVec
	// Uploaded is bytes this node's peer server sent to peers.
	Uploaded prometheus.Counter
}

// NewMetrics makes unregistered counters.
func NewMetrics() *Metrics {
	return &Metrics{
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Subsystem: "p2p", Name: "bytes_total",
			Help: "Blob bytes fetched by this node, by source (registry, peer, proxy)."}, []string{"source"}),
		PeerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Subsystem: "p2p", Name: "peer_errors_total",
			Help: "Failed or bad answers from peers and proxies, by reason."}, []string{"reason"}),
		Fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "obd", Subsystem: "p2p", Name: "fallbacks_total",
			Help: "Requests passed on after a P2P source failed, by failed source and next source."}, []string{"from", "to"}),
		Uploaded: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "obd", Subsystem: "p2p", Name: "uploaded_bytes_total",
			Help: "Blob bytes this node's peer server sent to peers."}),
	}
}

// Collectors lists the counters for registration.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Bytes, m.PeerErrors, m.Fallbacks, m.Uploaded}
}

func (m *Metrics) bytes(src string, n int) {
	if m != nil && n > 0 {
		m.Bytes.WithLabelValues(src).Add(float64(n))
	}
}

func (m *Metrics) peerError(reason string) {
	if m != nil {
		m.PeerErrors.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) fallback(from, to string) {
	if m != nil {
		m.Fallbacks.WithLabelValues(from, to).Inc()
	}
}
