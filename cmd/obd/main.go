// Command obd is the OverlayBD image service: offline layer tools and the device daemon.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	// Installed under a reference tool's name (bin/overlaybd-commit -> obd), obd
	// takes that tool's command line.
	if tool := filepath.Base(os.Args[0]); referenceTools[tool] != nil {
		lg, err := newLogger(envOr("OBD_LOG_LEVEL", "info"))
		if err == nil {
			zap.ReplaceGlobals(lg)
			err = referenceTools[tool](os.Args[1:])
			_ = lg.Sync()
		}
		if err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, tool+":") && !strings.HasPrefix(msg, tool+" ") {
				msg = tool + ": " + msg
			}
			fmt.Fprintln(os.Stderr, msg)
			os.Exit(1)
		}
		return
	}
	app := newApp()
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "obd: %v\n", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newApp() *cli.App {
	app := &cli.App{
		Name:    "obd",
		Usage:   "OverlayBD images: build, inspect and serve layered block devices",
		Version: version,
		Flags:   globalFlags(true),
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
			snapshotterCommand(),
			rpullCommand(),
			convertCommand(),
			pushCommand(),
		},
		// Errors are printed once by main, with the file and field that failed.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	for _, cmd := range app.Commands {
		withGlobalFlags(cmd)
	}
	app.Commands = append(app.Commands, referenceToolCommands()...)
	return app
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

// globalFlags are accepted before the command (obd -q zfile ...) and, as users also
// type them, after it (obd zfile -q ...).
func globalFlags(top bool) []cli.Flag {
	level := &cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error"}
	if top {
		level.Value, level.EnvVars = "info", []string{"OBD_LOG_LEVEL"}
	}
	return []cli.Flag{level, &cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress output"}}
}

// withGlobalFlags adds the global flags to a command and its subcommands; a
// --log-level given after the command replaces the logger before the command runs.
func withGlobalFlags(cmd *cli.Command) *cli.Command {
	if cmd.SkipFlagParsing {
		return cmd
	}
	cmd.Flags = append(cmd.Flags, globalFlags(false)...)
	before := cmd.Before
	cmd.Before = func(c *cli.Context) error {
		if c.IsSet("log-level") {
			lg, err := newLogger(c.String("log-level"))
			if err != nil {
				return err
			}
			zap.ReplaceGlobals(lg)
		}
		if before != nil {
			return before(c)
		}
		return nil
	}
	for _, sub := range cmd.Subcommands {
		withGlobalFlags(sub)
	}
	return cmd
}

// quiet reports whether -q was given before or after the command.
func quiet(c *cli.Context) bool {
	for _, x := range c.Lineage() {
		if x.Bool("quiet") {
			return true
		}
	}
	return false
}
