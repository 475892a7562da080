package p2p_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/p2p"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
	"github.com/obd-project/obd/remote"
	"go.uber.org/zap"
)

// tunnelProxy is a dfdaemon that passes https targets through: CONNECT opens a
// plain tunnel to the target, so TLS runs end to end with the registry.
type tunnelProxy struct {
	*httptest.Server
	tunnels atomic.Int64
}

func newTunnelProxy(t testing.TB) *tunnelProxy {
	p := &tunnelProxy{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusBadRequest)
			return
		}
		up, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		p.tunnels.Add(1)
		buf.WriteString("HTTP/1.1 200 Connection established\r\n\r\n")
		buf.Flush()
		go func() { io.Copy(up, buf); up.Close() }()
		io.Copy(conn, up)
		conn.Close()
	}))
	t.Cleanup(p.Close)
	return p
}

// TestDragonflyHTTPSRegistry: through dfdaemon's CONNECT tunnel, TLS to an https
// registry uses the registry client's settings: its CA file and client
// certificate, or its insecure hosts. No read falls back to the registry.
func TestDragonflyHTTPSRegistry(t *testing.T) {
	cc := registrytest.NewClientCert(t)
	mtls := registrytest.New(t, registrytest.WithTLS(cc.Pool))
	mtls.PushCert = &cc.Cert
	selfSigned := registrytest.New(t, registrytest.WithTLS(nil))
	for _, tc := range []struct {
		name  string
		reg   *registrytest.Registry
		opts  registry.Options
		tlsCA string // p2pConfig.tlsCA (dfdaemon's interception CA)
	}{
		{"CA file and client certificate", mtls, registry.Options{CAFile: mtls.CAFile(t), CertFile: cc.CertFile, KeyFile: cc.KeyFile}, ""},
		{"and tlsCA", mtls, registry.Options{CAFile: mtls.CAFile(t), CertFile: cc.CertFile, KeyFile: cc.KeyFile}, cc.CertFile},
		{"insecure host", selfSigned, registry.Options{InsecureSkipVerify: []string{selfSigned.Host}}, cc.CertFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := randomData(40, 4<<20)
			l := pushBlob(t, tc.reg, "tls/app", data)
			df := newTunnelProxy(t)
			m := p2p.NewMetrics()
			ro := tc.opts
			ro.Retry, ro.Logger = fastRetry, zap.NewNop()
			op, err := remote.NewOpener(remote.Options{Registry: ro,
				CacheDir: t.TempDir(), Cache: cache.Options{RefillSize: unit, ReadAhead: -1, Logger: zap.NewNop()},
				P2P:        config.P2PConfig{Enable: true, Mode: config.P2PModeDragonfly, Address: strings.TrimPrefix(df.URL, "http://"), TLSCA: tc.tlsCA},
				P2PMetrics: m, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			defer op.Close()
			b := openBlob(t, op, tc.reg.BlobURL("tls/app", l.Digest), l)
			spans, _ := scattered(41, int64(len(data)), 16)
			if f := readAll(t, b, data, spans, 4, nil); f != 0 {
				t.Fatalf("%d reads failed", f)
			}
			if df.tunnels.Load() == 0 || value(m.Bytes.WithLabelValues("proxy")) == 0 {
				t.Errorf("%d tunnels, %v bytes through dfdaemon: want some", df.tunnels.Load(), value(m.Bytes.WithLabelValues("proxy")))
			}
			if fb := value(m.Fallbacks.WithLabelValues("proxy", "registry")); fb != 0 {
				t.Errorf("%v fallbacks to the registry: TLS through the tunnel failed", fb)
			}
		})
	}
}
