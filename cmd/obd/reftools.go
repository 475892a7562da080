package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/zfile"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
)

// The reference toolchain's command lines (overlaybd-create, -commit, -zfile, -merge),
// for scripts written against it. They run as `obd overlaybd-create ...` or through a
// link named like the tool (`make build` puts them in bin/), dispatched on argv[0].
// Their flags follow the reference (src/tools/*.cpp, CLI11): options may come before,
// between or after the positional arguments, and short flags combine (-zt).
var referenceTools = map[string]func(args []string) error{
	"overlaybd-create": refCreate,
	"overlaybd-commit": refCommit,
	"overlaybd-zfile":  refZFile,
	"overlaybd-merge":  refMerge,
}

func referenceToolCommands() []*cli.Command {
	var cmds []*cli.Command
	for _, name := range []string{"overlaybd-create", "overlaybd-commit", "overlaybd-zfile", "overlaybd-merge"} {
		run := referenceTools[name]
		cmds = append(cmds, &cli.Command{
			Name:            name,
			Usage:           "the reference tool's command line (see docs/usage.md)",
			SkipFlagParsing: true,
			Action:          func(c *cli.Context) error { return run(c.Args().Slice()) },
		})
	}
	return cmds
}

// refArgs are parsed reference-tool arguments.
type refArgs struct {
	tool  string
	flags map[string]string // canonical name -> value ("true" for a flag)
	pos   []string
}

func (a refArgs) has(name string) bool {
	return a.flags[name] != "" && a.flags[name] != "false" && a.flags[name] != "0"
}

// parseRefArgs parses args against bools (flags) and values (options taking an
// argument); aliases maps other spellings to the canonical name.
func parseRefArgs(tool string, args []string, bools, values []string, aliases map[string]string) (refArgs, error) {
	a := refArgs{tool: tool, flags: map[string]string{}}
	isBool := map[string]bool{}
	isValue := map[string]bool{}
	for _, b := range bools {
		isBool[b] = true
	}
	for _, v := range values {
		isValue[v] = true
	}
	canon := func(n string) string {
		if c, ok := aliases[n]; ok {
			return c
		}
		return n
	}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		switch {
		case arg == "--":
			a.pos = append(a.pos, args[i+1:]...)
			return a, nil
		case arg == "-h" || arg == "--help":
			return a, fmt.Errorf("%s: usage: see `obd help` and docs/usage.md (reference-compatible flags: %s; options: %s)",
				tool, strings.Join(bools, " "), strings.Join(values, " "))
		case arg == "-" || !strings.HasPrefix(arg, "-"):
			a.pos = append(a.pos, arg)
			continue
		}
		name, val, hasVal := strings.Cut(arg, "=")
		name = canon(name)
		switch {
		case isBool[name]:
			if !hasVal {
				val = "true"
			}
			a.flags[name] = val
		case isValue[name]:
			if !hasVal {
				if i+1 >= len(args) {
					return a, fmt.Errorf("%s: %s needs a value", tool, name)
				}
				i++
				val = args[i]
			}
			a.flags[name] = val
		case !strings.HasPrefix(arg, "--") && len(arg) > 2 && !hasVal: // -zt
			for _, ch := range arg[1:] {
				n := canon("-" + string(ch))
				if !isBool[n] {
					return a, fmt.Errorf("%s: unknown flag -%c in %s", tool, ch, arg)
				}
				a.flags[n] = "true"
			}
		default:
			return a, fmt.Errorf("%s: unknown option %s", tool, arg)
		}
	}
	return a, nil
}

func (a refArgs) unsupported(names ...string) error {
	for _, n := range names {
		if a.has(n) {
			return fmt.Errorf("%s: %s is not supported by obd", a.tool, n)
		}
	}
	return nil
}

func (a refArgs) verbose() {
	if a.has("--verbose") || a.has("-v") {
		if lg, err := newLogger("debug"); err == nil {
			zap.ReplaceGlobals(lg)
		}
	}
}

// refCreate: overlaybd-create [-u PARENT] [-s] [--mkfs] DATA INDEX VSIZE_GB. A bare
// VSIZE is GiB (a unit such as 512M is accepted too); 0 makes a layer that takes its
// size from the layers below it, as the convertor's upper layers are created.
func refCreate(args []string) error {
	a, err := parseRefArgs("overlaybd-create", args, []string{"-s", "--mkfs", "--fastoci", "--turboOCI", "--raw", "-f"}, []string{"-u", "--uuid"},
		map[string]string{"--sparse": "-s", "--parent-uuid": "-u", "--force": "-f"})
	if err != nil {
		return err
	}
	if err := a.unsupported("--fastoci", "--turboOCI", "--raw"); err != nil {
		return err
	}
	if len(a.pos) != 3 {
		return fmt.Errorf("overlaybd-create: want DATA INDEX VSIZE_GB, got %d arguments", len(a.pos))
	}
	var size int64
	if n, err := strconv.ParseInt(a.pos[2], 10, 64); err == nil {
		if n < 0 || n > 1<<23 {
			return fmt.Errorf("overlaybd-create: VSIZE %d GiB out of range", n)
		}
		size = n << 30
	} else if size, err = parseSize(a.pos[2]); err != nil {
		return fmt.Errorf("overlaybd-create: VSIZE: %w", err)
	}
	spec := createSpec{data: a.pos[0], index: a.pos[1], force: a.has("-f"), mkfs: a.has("--mkfs"), emptyIndex: true,
		opts: lsmt.CreateOptions{VirtualSize: uint64(size), Sparse: a.has("-s")}}
	if spec.mkfs && size == 0 {
		return errors.New("overlaybd-create: --mkfs needs a size")
	}
	if s := a.flags["-u"]; s != "" {
		if spec.opts.ParentUUID, err = lsmt.ParseUUID(s); err != nil {
			return fmt.Errorf("overlaybd-create: -u: %w", err)
		}
	}
	if s := a.flags["--uuid"]; s != "" {
		if spec.opts.UUID, err = lsmt.ParseUUID(s); err != nil {
			return fmt.Errorf("overlaybd-create: --uuid: %w", err)
		}
	}
	return createLayer(spec)
}

// refLayerOutput is -z [--algorithm A] [--bs KB] [-t] of overlaybd-commit.
func refLayerOutput(a refArgs, compress bool) (layerOutput, error) {
	out := layerOutput{tar: a.has("-t"), blockSize: 4096}
	if !compress {
		if a.flags["--algorithm"] != "" || a.flags["--bs"] != "" {
			zap.L().Warn("--algorithm and --bs are ignored without -z", zap.String("tool", a.tool))
		}
		return out, nil
	}
	alg := a.flags["--algorithm"]
	if alg == "" {
		alg = "lz4"
	}
	var err error
	if out.compress, err = zfile.ParseAlgorithm(alg); err != nil {
		return out, fmt.Errorf("%s: --algorithm %q: want lz4 or zstd", a.tool, alg)
	}
	if bs := a.flags["--bs"]; bs != "" {
		if out.blockSize, err = parseRefBlockSize(bs); err != nil {
			return out, fmt.Errorf("%s: %w", a.tool, err)
		}
	}
	return out, nil
}

// parseRefBlockSize takes --bs in KiB: 4, 8, 16, 32 or 64.
func parseRefBlockSize(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 4 || n > 64 || n&(n-1) != 0 {
		return 0, fmt.Errorf("--bs %q: want the block size in KiB, a power of two from 4 to 64", s)
	}
	return n << 10, nil
}

// refCommit: overlaybd-commit [-m MSG] [--uuid U] [-p U] [-z [--algorithm A] [--bs KB]]
// [-t] [-f] [--seal | --commit_sealed] DATA [INDEX] [OUT].
func refCommit(args []string) error {
	a, err := parseRefArgs("overlaybd-commit", args,
		[]string{"-z", "-t", "-f", "--seal", "--commit_sealed", "--verbose", "--turboOCI", "--fastoci"},
		[]string{"-m", "--uuid", "-p", "--algorithm", "--bs", "--compress_threads", "--upload", "--upload_bs", "--cred_file_path", "--tls_key_path", "--tls_cert_path"},
		map[string]string{"--parent-uuid": "-p"})
	if err != nil {
		return err
	}
	a.verbose()
	if err := a.unsupported("--turboOCI", "--fastoci", "--upload", "--cred_file_path", "--tls_key_path", "--tls_cert_path"); err != nil {
		return err
	}
	var opts lsmt.CommitOptions
	if s := a.flags["--uuid"]; s != "" {
		if opts.UUID, err = lsmt.ParseUUID(s); err != nil {
			return fmt.Errorf("overlaybd-commit: --uuid: %w", err)
		}
	}
	if s := a.flags["-p"]; s != "" {
		if opts.ParentUUID, err = lsmt.ParseUUID(s); err != nil {
			return fmt.Errorf("overlaybd-commit: -p: %w", err)
		}
	}
	opts.UserTag = []byte(a.flags["-m"])
	if len(opts.UserTag) > lsmt.MaxUserTagSize {
		return fmt.Errorf("overlaybd-commit: -m is %d bytes, at most %d allowed", len(opts.UserTag), lsmt.MaxUserTagSize)
	}
	out, err := refLayerOutput(a, a.has("-z"))
	if err != nil {
		return err
	}
	switch {
	case a.has("--seal"):
		if len(a.pos) < 1 || len(a.pos) > 2 {
			return fmt.Errorf("overlaybd-commit --seal: want DATA [INDEX], got %d arguments", len(a.pos))
		}
		idx := ""
		if len(a.pos) == 2 {
			idx = a.pos[1]
		}
		return sealLayer(a.pos[0], idx, opts.UserTag)
	case a.has("--commit_sealed"):
		if len(a.pos) != 2 {
			return fmt.Errorf("overlaybd-commit --commit_sealed: want SEALED OUT, got %d arguments", len(a.pos))
		}
		return commitSealed(a.pos[0], outputSpec{dst: a.pos[1], force: a.has("-f")}, opts, out, false)
	}
	if len(a.pos) != 3 {
		return fmt.Errorf("overlaybd-commit: want DATA INDEX OUT, got %d arguments", len(a.pos))
	}
	return commitWritable(a.pos[0], a.pos[1], outputSpec{dst: a.pos[2], force: a.has("-f")}, opts, out, false)
}

// refZFile: overlaybd-zfile [-x] [-t] [-f] [--verify] [--algorithm A] [--bs KB] SRC [DST].
func refZFile(args []string) error {
	a, err := parseRefArgs("overlaybd-zfile", args, []string{"-x", "-t", "-f", "--verify"}, []string{"--algorithm", "--bs"}, nil)
	if err != nil {
		return err
	}
	if a.has("--verify") {
		if len(a.pos) != 1 {
			return fmt.Errorf("overlaybd-zfile --verify: want SRC, got %d arguments", len(a.pos))
		}
		return verifyZFile(a.pos[0])
	}
	if len(a.pos) != 2 {
		return fmt.Errorf("overlaybd-zfile: want SRC DST, got %d arguments", len(a.pos))
	}
	o := outputSpec{dst: a.pos[1], force: a.has("-f")}
	if a.has("-x") {
		return decompressZFile(a.pos[0], o, false)
	}
	out, err := refLayerOutput(a, true)
	if err != nil {
		return err
	}
	return compressZFile(a.pos[0], o, zfile.Options{Algorithm: out.compress, BlockSize: out.blockSize, NoHeaderOverwrite: true}, a.has("-t"), false)
}

// refMerge: overlaybd-merge [--compress[=false]] [-t] [-f] CONFIG.JSON OUT: the layers of
// an image config (local files; bottom first, with its writable upper if it has one)
// flattened into one layer, ZFile-compressed unless --compress=false.
func refMerge(args []string) error {
	a, err := parseRefArgs("overlaybd-merge", args, []string{"--compress", "-t", "-f", "--verbose"},
		[]string{"--service_config_path", "--upload", "--upload_bs", "--cred_file_path", "--tls_key_path", "--tls_cert_path"}, nil)
	if err != nil {
		return err
	}
	a.verbose()
	if err := a.unsupported("--upload", "--cred_file_path", "--tls_key_path", "--tls_cert_path"); err != nil {
		return err
	}
	if len(a.pos) != 2 {
		return fmt.Errorf("overlaybd-merge: want CONFIG OUT, got %d arguments", len(a.pos))
	}
	abs, err := filepath.Abs(a.pos[0])
	if err != nil {
		return err
	}
	cfg, err := config.LoadImageConfig(abs)
	if err != nil {
		return err
	}
	lowers, _ := cfg.StackLowers()
	var layers []string
	for i, l := range lowers {
		found := ""
		for _, p := range l.LocalCandidates() {
			if _, err := os.Stat(p); err == nil {
				found = p
				break
			}
		}
		if found == "" {
			return fmt.Errorf("overlaybd-merge: %s: lowers[%d] has no local file (obd pull the image first)", a.pos[0], i)
		}
		layers = append(layers, found)
	}
	compress := a.flags["--compress"] == "" || a.has("--compress") // on by default, as the reference
	out, err := refLayerOutput(a, compress)
	if err != nil {
		return err
	}
	upperData, upperIndex := "", ""
	if !cfg.ReadOnly() {
		upperData, upperIndex = cfg.Upper.Data, cfg.Upper.Index
	}
	return mergeLayers(layers, upperData, upperIndex, outputSpec{dst: a.pos[1], force: a.has("-f"), inputs: []string{a.pos[0]}}, lsmt.CommitOptions{}, out, false)
}
