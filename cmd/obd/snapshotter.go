package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/obd-project/obd/daemon/api"
	"github.com/obd-project/obd/snapshotter"
)

func snapshotterCommand() *cli.Command {
	return &cli.Command{
		Name:  "snapshotter",
		Usage: "serve containerd's snapshots API as the overlaybd snapshotter (a drop-in for accelerated-container-image's)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Value: snapshotter.DefaultConfigPath, Usage: "the overlaybd snapshotter's config.json (missing file: defaults)"},
			&cli.StringFlag{Name: "frontend", Value: string(api.FrontendAuto), Usage: "device frontend asked of the obd daemon: auto, ublk or fuse"},
			socketFlag,
		},
		Action: func(c *cli.Context) error {
			cfg, err := snapshotter.LoadBootConfig(c.String("config"))
			if err != nil {
				return err
			}
			fe, err := api.ParseFrontend(c.String("frontend"))
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			client := api.NewClient(c.String("socket"))
			if _, err := client.List(c.Context); err != nil {
				// Not fatal: containers of ordinary images need no device, and the
				// daemon may come up later.
				zap.L().Warn("obd daemon not reachable: overlaybd layers cannot be attached until it is", zap.Error(err))
			}
			devs := snapshotter.DaemonDevices{Client: client, Frontend: fe}
			sn, err := snapshotter.New(cfg, devs, []string{self})
			if err != nil {
				return err
			}
			defer sn.Close()
			if err := os.MkdirAll(filepath.Dir(cfg.Address), 0o700); err != nil {
				return err
			}
			if err := os.Remove(cfg.Address); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("stale socket %s: %w", cfg.Address, err)
			}
			l, err := net.Listen("unix", cfg.Address)
			if err != nil {
				return err
			}
			srv := grpc.NewServer()
			snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn.Instrumented()))
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if cfg.Exporter.Enable {
				ml, err := net.Listen("tcp", cfg.MetricsAddress())
				if err != nil {
					return fmt.Errorf("exporterConfig: %w", err)
				}
				go func() {
					if err := sn.ServeMetrics(ctx, ml); err != nil {
						zap.L().Error("metrics exporter stopped", zap.Error(err))
					}
				}()
			}
			go func() {
				<-ctx.Done()
				// Mounts and devices stay: running containers keep their root file systems.
				srv.GracefulStop()
			}()
			zap.L().Info("overlaybd snapshotter serving", zap.String("address", cfg.Address), zap.String("root", cfg.Root),
				zap.String("rwMode", cfg.RwMode), zap.String("obdSocket", c.String("socket")),
				zap.Bool("asyncRemove", cfg.AsyncRemove), zap.Int("tenant", cfg.Tenant))
			if err := srv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return err
			}
			zap.L().Info("overlaybd snapshotter stopped", zap.String("reason", context.Cause(ctx).Error()))
			return nil
		},
	}
}
