// Package service is the composition root of `obd daemon`: it opens registry
// access (remote opener, extent cache, P2P), builds the device manager, and runs
// the peer server, the metrics server and the API socket around it until the
// daemon stops. The daemon package itself imports no network code; the CLI only
// turns flags into Options.
package service

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/daemon"
	"github.com/obd-project/obd/p2p"
	"github.com/obd-project/obd/remote"
	"go.uber.org/zap"
)

// Options configure one daemon run.
type Options struct {
	// Global is the daemon config (overlaybd.json); nil = defaults.
	Global *config.GlobalConfig
	// StateDir keeps one record per device; RunDir holds FUSE mount points.
	StateDir, RunDir string
	// Socket is the API's unix socket.
	Socket string
	// CacheDir overrides cacheConfig.cacheDir.
	CacheDir string
	// MetricsAddr serves Prometheus metrics there ("" = exporterConfig.port when
	// exporterConfig.enable, else none).
	MetricsAddr string
	// NoRecovery creates ublk devices without user recovery.
	NoRecovery bool
	// KeepDevices leaves ublk devices (flushed) for the next daemon at a stop.
	KeepDevices bool
	// LayerDirsBytes bounds the download layer directories (0: the config's).
	LayerDirsBytes int64
	// Force, once closed, detaches devices still in use at a stop.
	Force  <-chan struct{}
	Logger *zap.Logger
}

// NewRemote opens registry access and the extent cache per the global config;
// cacheDir overrides cacheConfig.cacheDir.
func NewRemote(g *config.GlobalConfig, cacheDir string, lg *zap.Logger) (*remote.Opener, error) {
	o, err := remote.OptionsFromGlobal(g)
	if err != nil {
		return nil, err
	}
	if cacheDir != "" {
		o.CacheDir = cacheDir
	}
	o.Logger = lg
	return remote.NewOpener(o)
}

// Run serves devices until ctx ends (or the API fails), then stops them: devices
// come back from the state directory first, and the API keeps answering while the
// stop waits for devices in use.
func Run(ctx context.Context, o Options) error {
	lg := o.Logger
	if lg == nil {
		lg = zap.L()
	}
	g := o.Global
	if g == nil {
		g = config.DefaultGlobalConfig()
	}
	opts := daemon.Options{StateDir: o.StateDir, RunDir: o.RunDir, Global: g, NoRecovery: o.NoRecovery,
		Logger: lg, LayerDirsBytes: o.LayerDirsBytes}
	var peers *p2p.Server
	if rem, err := NewRemote(g, o.CacheDir, lg); err != nil {
		lg.Warn("remote images disabled", zap.Error(err))
	} else {
		defer rem.Close()
		opts.Remote, opts.Resolver = rem, rem
		opts.Collectors = append(opts.Collectors, rem.Collector())
		opts.Collectors = append(opts.Collectors, rem.P2PMetrics().Collectors()...)
		peers = rem.PeerServer()
	}
	m, err := daemon.NewManager(opts)
	if err != nil {
		return err
	}
	if peers != nil {
		pc := g.P2PConfig
		go func() {
			if err := p2p.Serve(ctx, pc.Listen, pc.TLSCert, pc.TLSKey, peers, lg); err != nil {
				lg.Error("p2p peer server", zap.Error(err))
			}
		}()
	}
	// The metrics address is checked before any device comes back.
	metricsLn, metricsPath, err := listenMetrics(g, o.MetricsAddr)
	if err != nil {
		return err
	}
	if err := m.Restore(ctx); err != nil {
		return err
	}
	if metricsLn != nil {
		go func() {
			if err := daemon.ServeMetricsOn(ctx, m, metricsLn, metricsPath); err != nil {
				lg.Error("metrics server", zap.Error(err))
			}
		}()
	}
	// The API keeps answering while Stop waits for devices in use.
	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopAPI()
	served := make(chan error, 1)
	go func() { served <- daemon.Serve(apiCtx, m, o.Socket) }()
	select {
	case <-ctx.Done():
	case err = <-served:
		served = nil
	}
	stopErr := m.Stop(daemon.StopOptions{Force: o.Force, KeepUblk: o.KeepDevices})
	stopAPI()
	if served != nil {
		err = <-served
	}
	return errors.Join(err, stopErr)
}

// listenMetrics opens the metrics listener: addr (--metrics-addr), else
// exporterConfig.port when exporterConfig.enable; nil if neither.
func listenMetrics(g *config.GlobalConfig, addr string) (net.Listener, string, error) {
	path, addrFrom := g.ExporterConfig.URIPrefix, "--metrics-addr"
	if addr == "" && g.ExporterConfig.Enable {
		addr, addrFrom = fmt.Sprintf(":%d", g.ExporterConfig.Port), "exporterConfig.port"
	}
	if path == "" {
		path = "/metrics"
	}
	if addr == "" {
		return nil, path, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("%s %q: cannot serve metrics there: %w", addrFrom, addr, err)
	}
	return ln, path, nil
}
