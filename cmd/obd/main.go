// Command obd is the OverlayBD image service: offline layer tools and the device daemon.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	app := newApp()
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "obd: %v\n", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:    "obd",
		Usage:   "OverlayBD images: build, inspect and serve layered block devices",
		Version: version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"OBD_LOG_LEVEL"}},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress output"},
		},
		Before: func(c *cli.Context) error {
			lg, err := newLogger(c.String("log-level"))
			if err != nil {
				return err
			}
			zap.ReplaceGlobals(lg)
			return nil
		},
		After: func(*cli.Context) error {
			_ = zap.L().Sync()
			return nil
		},
		Commands: []*cli.Command{
			createCommand(),
			importCommand(),
			commitCommand(),
			sealCommand(),
			zfileCommand(),
			mergeCommand(),
			inspectCommand(),
			exportCommand(),
			daemonCommand(),
			attachCommand(),
			detachCommand(),
			listCommand(),
			pullCommand(),
			statsCommand(),
		},
		// Errors are printed once by main, with the file and field that failed.
		ExitErrHandler: func(*cli.Context, error) {},
	}
}

// newLogger logs to stderr so that stdout stays for command output (a device path, JSON, a stream).
func newLogger(level string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.OutputPaths = []string{"stderr"}
	cfg.ErrorOutputPaths = []string{"stderr"}
	cfg.DisableStacktrace = true
	return cfg.Build()
}
