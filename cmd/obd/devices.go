package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/daemon"
	"github.com/obd-project/obd/daemon/api"
	"github.com/obd-project/obd/daemon/service"
	"github.com/obd-project/obd/remote"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
)

var socketFlag = &cli.StringFlag{Name: "socket", Value: daemon.DefaultSocket, Usage: "the daemon's API socket", EnvVars: []string{"OBD_SOCKET"}}

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "run the device daemon: owns every attached device, recovers them after a crash",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Value: "/etc/overlaybd/overlaybd.json", Usage: "global config (missing file: defaults)"},
			&cli.StringFlag{Name: "state-dir", Value: "/var/lib/obd/state", Usage: "where each device's record is kept"},
			&cli.StringFlag{Name: "run-dir", Value: "/run/obd", Usage: "FUSE mount points"},
			&cli.BoolFlag{Name: "no-recovery", Usage: "create ublk devices without user recovery"},
			&cli.BoolFlag{Name: "keep-devices", Usage: "on SIGTERM, exit without detaching ublk devices (flushed): they wait (quiesced) for the next daemon"},
			forceStopFlag,
			&cli.StringFlag{Name: "cache-dir", Usage: "registry extent cache directory (default: cacheConfig.cacheDir)"},
			&cli.StringFlag{Name: "download-dir-size", Usage: "bound of the background download's layer directories under --state-dir/layers (e.g. 20GiB; default: downloadDirSizeGB, else cacheSizeGB)"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics at this address (default: exporterConfig.port when exporterConfig.enable)"},
			insecureRegistryFlag,
			socketFlag,
		},
		Action: func(c *cli.Context) error {
			g, err := loadGlobalConfig(c, "config")
			if err != nil {
				return err
			}
			o := service.Options{Global: g, StateDir: c.String("state-dir"), RunDir: c.String("run-dir"),
				Socket: c.String("socket"), CacheDir: c.String("cache-dir"), MetricsAddr: c.String("metrics-addr"),
				NoRecovery: c.Bool("no-recovery"), KeepDevices: c.Bool("keep-devices"), Logger: zap.L()}
			if v := c.String("download-dir-size"); v != "" {
				n, err := parseSize(v)
				if err != nil || n <= 0 {
					return fmt.Errorf("--download-dir-size %q: want a size > 0 such as 20GiB", v)
				}
				o.LayerDirsBytes = n
			}
			ctx, force, stop := stopSignals(c.Bool("force"))
			defer stop()
			o.Force = force
			return service.Run(ctx, o)
		},
	}
}

func attachCommand() *cli.Command {
	return &cli.Command{
		Name:      "attach",
		Usage:     "attach an image as a block device and print the path to use",
		ArgsUsage: "[CONFIG.json | REGISTRY/REPO:TAG | REGISTRY/REPO@sha256:...]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "config.v1.json of the device"},
			&cli.StringFlag{Name: "upper", Usage: "with an image reference: directory of a writable layer (created if missing)"},
			&cli.StringFlag{Name: "cache-dir", Usage: "with --foreground and an image reference: registry cache directory"},
			&cli.StringFlag{Name: "global-config", Value: "/etc/overlaybd/overlaybd.json", Usage: "with --foreground: global config (registry, cache)"},
			&cli.StringFlag{Name: "frontend", Value: "auto", Usage: "auto (ublk if /dev/ublk-control exists, else fuse), ublk or fuse"},
			&cli.BoolFlag{Name: "foreground", Aliases: []string{"f"}, Usage: "serve in this process, without a daemon, until SIGINT/SIGTERM"},
			&cli.StringFlag{Name: "run-dir", Value: "/run/obd", Usage: "with --foreground: where FUSE mount points go"},
			&cli.BoolFlag{Name: "json", Usage: "print the device status as JSON after the path"},
			&cli.StringFlag{Name: "record-trace", Usage: "record the reads of this attach into FILE (a reference-format trace, written when FILE.lock is deleted or at detach)"},
			&cli.StringFlag{Name: "prefetch", Usage: "replay the trace FILE (from --record-trace or an acceleration layer) or prefetch the files of the file list FILE while serving, to warm the cache"},
			insecureRegistryFlag,
			forceStopFlag,
			socketFlag,
		},
		Action: func(c *cli.Context) error {
			cfgPath, ref := c.String("config"), ""
			tr := daemon.TraceOptions{RecordTrace: c.String("record-trace"), Prefetch: c.String("prefetch")}
			if tr.RecordTrace != "" && tr.Prefetch != "" {
				return fmt.Errorf("attach: --record-trace and --prefetch exclude each other")
			}
			if tr.RecordTrace != "" {
				tr.RecordTrace = absPath(tr.RecordTrace)
			}
			if tr.Prefetch != "" {
				tr.Prefetch = absPath(tr.Prefetch)
				if _, err := os.Stat(tr.Prefetch); err != nil {
					return fmt.Errorf("attach: --prefetch: %w", err)
				}
			}
			if c.NArg() > 1 || (c.NArg() == 1 && cfgPath != "") || (c.NArg() == 0 && cfgPath == "") {
				return fmt.Errorf("attach: usage: obd attach [--frontend auto|ublk|fuse] [--foreground] (--config CONFIG.json | IMAGE-REFERENCE)")
			}
			if c.NArg() == 1 {
				var err error
				if cfgPath, ref, err = classifyAttachArg(c.Args().First()); err != nil {
					return err
				}
			}
			// Say which the argument was understood as: after the device path (the
			// first line of the output, which scripts read) or in the error.
			what := "config file " + cfgPath
			if ref != "" {
				what = "image reference " + ref
			}
			understood := func(st daemon.Status, err error) error {
				if err != nil {
					return fmt.Errorf("attach %s: %w", what, err)
				}
				if err := printAttached(st, c.Bool("json")); err != nil {
					return err
				}
				zap.L().Info("attached " + what)
				for _, w := range st.Warnings {
					if c.Bool("foreground") {
						break // this process's manager logged them
					}
					zap.L().Warn("config file " + st.Config + ": " + w)
				}
				return nil
			}
			if len(c.StringSlice("insecure-registry")) > 0 && !c.Bool("foreground") {
				return fmt.Errorf("attach: --insecure-registry applies to --foreground; the daemon takes it as `obd daemon --insecure-registry`")
			}
			if ref == "" && c.String("upper") != "" {
				return fmt.Errorf("attach: --upper goes with an image reference; a config file names its upper layer itself")
			}
			fe, err := daemon.ParseFrontend(c.String("frontend"))
			if err != nil {
				return err
			}
			upper := c.String("upper")
			if upper != "" {
				upper = absPath(upper)
			}
			if !c.Bool("foreground") {
				if c.String("cache-dir") != "" {
					return fmt.Errorf("attach: --cache-dir applies to --foreground; the daemon's cache is set with `obd daemon --cache-dir`")
				}
				if c.Bool("force") {
					return fmt.Errorf("attach: --force applies to --foreground; the daemon's is `obd daemon --force`")
				}
				return understood(attachWith(c.Context, api.NewClient(c.String("socket")), ref, absPath(cfgPath), upper, fe, tr))
			}
			opts := daemon.Options{RunDir: c.String("run-dir"), Logger: zap.L()}
			if ref != "" {
				g, rem, err := remoteFromFlags(c)
				if err != nil {
					return err
				}
				defer rem.Close()
				opts.Remote, opts.Resolver, opts.Global = rem, rem, g
			}
			m, err := daemon.NewManager(opts)
			if err != nil {
				return err
			}
			ctx, force, stop := stopSignals(c.Bool("force"))
			defer stop()
			st, err := attachWith(ctx, m, ref, cfgPath, upper, fe, tr)
			if err := understood(st, err); err != nil {
				m.DetachAll()
				return err
			}
			<-ctx.Done()
			zap.L().Info("signal received, detaching", zap.String("path", st.Path))
			return m.Stop(daemon.StopOptions{Force: force})
		},
	}
}

// attacher is the daemon's client or, with --foreground, this process's manager.
type attacher interface {
	AttachTrace(ctx context.Context, configPath string, fe api.Frontend, tr api.TraceOptions) (api.Status, error)
	AttachImage(ctx context.Context, req api.ImageRequest) (api.Status, error)
}

// attachWith attaches the image reference ref, else the config file cfgPath.
func attachWith(ctx context.Context, a attacher, ref, cfgPath, upper string, fe api.Frontend, tr api.TraceOptions) (api.Status, error) {
	if ref != "" {
		return a.AttachImage(ctx, api.ImageRequest{Ref: ref, Upper: upper, Frontend: fe, TraceOptions: tr})
	}
	return a.AttachTrace(ctx, cfgPath, fe, tr)
}

var insecureRegistryFlag = &cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach registry HOST[:PORT] over plain HTTP or unverified TLS (repeatable; also overlaybd.json insecureRegistries)"}

// loadGlobalConfig reads the overlaybd.json named by flag, logs its unknown keys
// and adds the --insecure-registry hosts (if the command has the flag).
func loadGlobalConfig(c *cli.Context, flag string) (*config.GlobalConfig, error) {
	path := c.String(flag)
	g, err := config.LoadGlobalConfig(path)
	if err != nil {
		return nil, err
	}
	for _, w := range g.Warnings {
		zap.L().Warn("global config: "+w, zap.String("config", path))
	}
	for _, h := range c.StringSlice("insecure-registry") {
		if err := config.CheckRegistryHost("--insecure-registry", h); err != nil {
			return nil, err
		}
		g.InsecureRegistries = append(g.InsecureRegistries, h)
	}
	return g, nil
}

// classifyAttachArg decides what `obd attach ARG` names: an existing file is a
// config file and is never resolved as an image reference; a missing one is an
// image reference only if it does not look like a path, so a mistyped config path
// is not sent to a registry.
func classifyAttachArg(arg string) (cfgPath, ref string, err error) {
	st, err := os.Stat(arg)
	switch {
	case err == nil && st.Mode().IsRegular():
		return arg, "", nil
	case err == nil && st.IsDir():
		return "", "", fmt.Errorf("attach: %s is a directory, not a config file; for an image reference of that name, write it with its registry (e.g. docker.io/library/%s)", arg, arg)
	case err == nil:
		return "", "", fmt.Errorf("attach: %s is not a regular file, so not a config file", arg)
	case !errors.Is(err, os.ErrNotExist):
		return "", "", fmt.Errorf("attach: config file %s: %w", arg, err)
	}
	if strings.HasSuffix(arg, ".json") || strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, "./") ||
		strings.HasPrefix(arg, "../") || strings.HasPrefix(arg, "~") {
		return "", "", fmt.Errorf("attach: config file %s: no such file (it looks like a path, so it is not tried as an image reference)", arg)
	}
	if _, perr := name.ParseReference(arg); perr != nil {
		return "", "", fmt.Errorf("attach: %s: no such config file, and not an image reference: %w", arg, perr)
	}
	return "", arg, nil
}

var forceStopFlag = &cli.BoolFlag{Name: "force", Usage: "on SIGINT/SIGTERM, detach devices still in use after flushing them (their users get I/O errors); " +
	"without it they keep being served until released, and a second signal forces"}

// stopSignals returns a context that ends at the first SIGINT/SIGTERM and a
// channel closed at the second one (at the first with forceFlag): a stop waits
// for devices in use until then.
func stopSignals(forceFlag bool) (context.Context, <-chan struct{}, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	force := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		zap.L().Info("stopping", zap.String("signal", sig.String()))
		cancel()
		if !forceFlag {
			sig = <-sigs
			zap.L().Warn("second signal: detaching devices still in use after a flush", zap.String("signal", sig.String()))
		}
		close(force)
	}()
	return ctx, force, func() { signal.Stop(sigs); cancel() }
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// printAttached prints the path to use as the first stdout line.
func printAttached(st daemon.Status, asJSON bool) error {
	if _, err := fmt.Println(st.Path); err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(os.Stdout).Encode(st)
	}
	return nil
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:      "detach",
		Usage:     "detach a device (by path or id) from the daemon",
		ArgsUsage: "DEVICE|ID",
		Flags:     []cli.Flag{socketFlag, &cli.BoolFlag{Name: "force", Usage: "detach even if the device is mounted (its users get I/O errors)"}},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, 1); err != nil {
				return err
			}
			return daemon.NewClient(c.String("socket")).Detach(c.Context, c.Args().First(), c.Bool("force"))
		},
	}
}

func listCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the daemon's devices",
		Flags: []cli.Flag{socketFlag, &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			devs, err := daemon.NewClient(c.String("socket")).List(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return json.NewEncoder(os.Stdout).Encode(devs)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tDEVICE\tFRONTEND\tSTATE\tSIZE\tREAD\tWRITTEN\tDOWNLOAD\tTRACE\tCONFIG")
			for _, d := range devs {
				state := d.State
				if d.ReadOnly {
					state += ",ro"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Path, d.Frontend, state,
					humanBytes(uint64(d.Size)), humanBytes(uint64(d.BytesRead)), humanBytes(uint64(d.BytesWritten)), downloadSummary(d.Downloads), traceSummary(d.Record), d.Config)
			}
			return tw.Flush()
		},
	}
}

// remoteFromFlags loads --global-config and opens the registry client and cache
// it describes (--cache-dir overriding cacheConfig.cacheDir).
func remoteFromFlags(c *cli.Context) (*config.GlobalConfig, *remote.Opener, error) {
	g, err := loadGlobalConfig(c, "global-config")
	if err != nil {
		return nil, nil, err
	}
	rem, err := service.NewRemote(g, c.String("cache-dir"), zap.L())
	if err != nil {
		return nil, nil, err
	}
	return g, rem, nil
}
