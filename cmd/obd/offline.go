package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/zfile"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
)

// Flags shared by the commands that write a sealed layer.
func layerOutputFlags(defaultCompress string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "compress", Aliases: []string{"z"}, Value: defaultCompress, Usage: "compress the layer as a ZFile: lz4, zstd or none"},
		&cli.StringFlag{Name: "block-size", Value: "4K", Usage: "ZFile block size, 4K to 64K"},
		&cli.BoolFlag{Name: "tar", Aliases: []string{"t"}, Usage: "wrap the layer in a tar, as registry blobs are"},
	}
}

func commitFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "uuid", Usage: "uuid of the new layer (default: the null uuid, as overlaybd-commit)"},
		&cli.StringFlag{Name: "parent-uuid", Aliases: []string{"p"}, Usage: "parent uuid (default: the source's parent)"},
		&cli.StringFlag{Name: "message", Aliases: []string{"m"}, Usage: "commit message (user tag), at most 256 bytes"},
	}
}

func parseLayerOutput(c *cli.Context) (layerOutput, error) {
	var out layerOutput
	out.tar = c.Bool("tar")
	switch a := strings.ToLower(c.String("compress")); a {
	case "", "none", "false":
	default:
		alg, err := zfile.ParseAlgorithm(a)
		if err != nil {
			return out, fmt.Errorf("--compress %q: want lz4, zstd or none", a)
		}
		out.compress = alg
	}
	bs, err := parseBlockSize(c.String("block-size"))
	if err != nil {
		return out, err
	}
	out.blockSize = bs
	return out, nil
}

// parseBlockSize takes 4K..64K, a byte count, or (as overlaybd-commit --bs) a KiB count 4..64.
func parseBlockSize(s string) (int, error) {
	n, err := parseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--block-size: %w", err)
	}
	if n >= 4 && n <= 64 {
		n <<= 10
	}
	if n < 4096 || n > 65536 || n&(n-1) != 0 {
		return 0, fmt.Errorf("--block-size %s: want a power of two from 4K to 64K", s)
	}
	return int(n), nil
}

func parseCommitOptions(c *cli.Context) (lsmt.CommitOptions, error) {
	var o lsmt.CommitOptions
	var err error
	if s := c.String("uuid"); s != "" {
		if o.UUID, err = lsmt.ParseUUID(s); err != nil {
			return o, fmt.Errorf("--uuid: %w", err)
		}
	}
	if s := c.String("parent-uuid"); s != "" {
		if o.ParentUUID, err = lsmt.ParseUUID(s); err != nil {
			return o, fmt.Errorf("--parent-uuid: %w", err)
		}
	}
	o.UserTag = []byte(c.String("message"))
	if len(o.UserTag) > lsmt.MaxUserTagSize {
		return o, fmt.Errorf("--message is %d bytes, at most %d allowed", len(o.UserTag), lsmt.MaxUserTagSize)
	}
	return o, nil
}

func needArgs(c *cli.Context, min, max int) error {
	if n := c.NArg(); n < min || (max >= 0 && n > max) {
		return fmt.Errorf("%s: wrong number of arguments (%d); usage: obd %s %s", c.Command.Name, n, c.Command.Name, c.Command.ArgsUsage)
	}
	return nil
}

func createCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "create an empty writable layer (overlaybd-create)",
		ArgsUsage: "DATA INDEX SIZE",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "sparse", Aliases: []string{"s"}, Usage: "sparse layer: one data file, INDEX is not created"},
			&cli.StringFlag{Name: "parent-uuid", Aliases: []string{"u"}, Usage: "parent layer uuid"},
			&cli.StringFlag{Name: "uuid", Usage: "layer uuid (default: random)"},
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 3, 3); err != nil {
				return err
			}
			size, err := parseSize(c.Args().Get(2))
			if err != nil {
				return err
			}
			if size%lsmt.SectorSize != 0 {
				return fmt.Errorf("SIZE %d is not a multiple of %d", size, lsmt.SectorSize)
			}
			opts := lsmt.CreateOptions{VirtualSize: uint64(size), Sparse: c.Bool("sparse")}
			if s := c.String("parent-uuid"); s != "" {
				if opts.ParentUUID, err = lsmt.ParseUUID(s); err != nil {
					return fmt.Errorf("--parent-uuid: %w", err)
				}
			}
			if s := c.String("uuid"); s != "" {
				if opts.UUID, err = lsmt.ParseUUID(s); err != nil {
					return fmt.Errorf("--uuid: %w", err)
				}
			}
			dataPath, indexPath := c.Args().Get(0), c.Args().Get(1)
			// O_EXCL, as overlaybd-create: never clobber a layer.
			data, err := os.OpenFile(dataPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			var index *os.File
			if !opts.Sparse {
				if index, err = os.OpenFile(indexPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644); err != nil {
					data.Close()
					os.Remove(dataPath)
					return err
				}
			}
			w, err := lsmt.Create(data, index, opts)
			if err == nil {
				err = w.Close()
			}
			if err != nil {
				data.Close()
				os.Remove(dataPath)
				if index != nil {
					index.Close()
					os.Remove(indexPath)
				}
				return err
			}
			zap.L().Info("created writable layer", zap.String("data", dataPath), zap.String("index", indexPath),
				zap.Int64("size", size), zap.Bool("sparse", opts.Sparse), zap.Stringer("uuid", w.Header().UUID))
			return nil
		},
	}
}

// openWritable opens DATA (and INDEX unless the data file is sparse) read-write.
func openWritable(dataPath, indexPath string) (*lsmt.Writable, error) {
	return image.OpenWritable(dataPath, indexPath)
}

func commitCommand() *cli.Command {
	return &cli.Command{
		Name:      "commit",
		Usage:     "pack a writable layer (or, with --sealed, a sealed one) into a sealed layer (overlaybd-commit)",
		ArgsUsage: "DATA INDEX OUT  |  --sealed SEALED OUT",
		Flags: append(append(layerOutputFlags("none"), commitFlags()...),
			&cli.BoolFlag{Name: "sealed", Usage: "the source is a sealed layer file (overlaybd-commit --commit_sealed)"}),
		Action: func(c *cli.Context) error {
			out, err := parseLayerOutput(c)
			if err != nil {
				return err
			}
			opts, err := parseCommitOptions(c)
			if err != nil {
				return err
			}
			if c.Bool("sealed") {
				if err := needArgs(c, 2, 2); err != nil {
					return err
				}
				l, err := layer.OpenFile(c.Args().Get(0))
				if err != nil {
					return err
				}
				defer l.Close()
				im, err := lsmt.NewImage([]*lsmt.Layer{l.Layer}, nil)
				if err != nil {
					return err
				}
				src, err := im.CommitSource()
				if err != nil {
					return err
				}
				return writeLayer(c.Args().Get(1), src, opts, out, c.Bool("quiet"))
			}
			if err := needArgs(c, 3, 3); err != nil {
				return err
			}
			w, err := openWritable(c.Args().Get(0), c.Args().Get(1))
			if err != nil {
				return err
			}
			defer w.Close()
			return writeLayer(c.Args().Get(2), w.CommitSource(), opts, out, c.Bool("quiet"))
		},
	}
}

func sealCommand() *cli.Command {
	return &cli.Command{
		Name:      "seal",
		Usage:     "seal a writable layer in place: DATA becomes a read-only layer (overlaybd-commit --seal)",
		ArgsUsage: "DATA INDEX",
		Flags:     []cli.Flag{&cli.StringFlag{Name: "message", Aliases: []string{"m"}, Usage: "user tag, at most 256 bytes"}},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, 2); err != nil {
				return err
			}
			w, err := openWritable(c.Args().Get(0), c.Args().Get(1))
			if err != nil {
				return err
			}
			if err := w.CloseSeal([]byte(c.String("message"))); err != nil {
				w.Close()
				return err
			}
			return nil
		},
	}
}

func zfileCommand() *cli.Command {
	return &cli.Command{
		Name:      "zfile",
		Usage:     "compress a file into a ZFile, or decompress / verify one (overlaybd-zfile)",
		ArgsUsage: "SRC [DST]   (SRC - reads stdin when compressing; DST - writes stdout)",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "decompress", Aliases: []string{"x", "d"}, Usage: "decompress SRC"},
			&cli.BoolFlag{Name: "verify", Usage: "only check SRC's header, index and every block CRC"},
			&cli.StringFlag{Name: "algorithm", Value: "lz4", Usage: "lz4 or zstd"},
			&cli.StringFlag{Name: "block-size", Value: "4K", Usage: "4K to 64K"},
		},
		Action: func(c *cli.Context) error {
			src := c.Args().Get(0)
			if c.Bool("verify") {
				if err := needArgs(c, 1, 1); err != nil {
					return err
				}
				_, z, closeFn, err := openZFile(src)
				if err != nil {
					return err
				}
				defer closeFn()
				if err := z.Verify(); err != nil {
					return err
				}
				fmt.Printf("%s: ok (%d blocks)\n", src, z.Info().Blocks)
				return nil
			}
			if err := needArgs(c, 2, 2); err != nil {
				return err
			}
			dst := c.Args().Get(1)
			if c.Bool("decompress") {
				_, z, closeFn, err := openZFile(src)
				if err != nil {
					return err
				}
				defer closeFn()
				return writeStream(dst, func(w io.Writer) error {
					_, err := io.Copy(w, io.NewSectionReader(z, 0, z.Size()))
					return err
				}, z.Size(), c.Bool("quiet"))
			}
			alg, err := zfile.ParseAlgorithm(c.String("algorithm"))
			if err != nil {
				return fmt.Errorf("--algorithm: %w", err)
			}
			bs, err := parseBlockSize(c.String("block-size"))
			if err != nil {
				return err
			}
			var in io.Reader = os.Stdin
			var total int64
			if src != "-" {
				f, err := os.Open(src)
				if err != nil {
					return err
				}
				defer f.Close()
				if st, err := f.Stat(); err == nil {
					total = st.Size()
				}
				in = f
			}
			return writeStream(dst, func(w io.Writer) error {
				// overlaybd-zfile leaves the header as first written (flags 0x13).
				_, err := zfile.Compress(w, in, zfile.Options{Algorithm: alg, BlockSize: bs, NoHeaderOverwrite: true})
				return err
			}, total, c.Bool("quiet"))
		},
	}
}

func openZFile(path string) (*os.File, *zfile.Reader, func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, nil, err
	}
	z, err := zfile.Open(f, st.Size(), zfile.WithName(path))
	if err != nil {
		f.Close()
		return nil, nil, nil, err
	}
	return f, z, func() { f.Close() }, nil
}

// writeStream runs fn on dst ("-" = stdout), atomically for a file.
func writeStream(dst string, fn func(io.Writer) error, total int64, quiet bool) error {
	if dst == "-" {
		return fn(os.Stdout)
	}
	f, err := createAtomic(dst)
	if err != nil {
		return err
	}
	prog := newProgress(dst, total, quiet)
	err = fn(prog.writer(f))
	prog.done()
	if err != nil {
		f.abort()
		return err
	}
	return f.commit()
}

func mergeCommand() *cli.Command {
	return &cli.Command{
		Name:      "merge",
		Usage:     "flatten a stack of layers (bottom first) into one sealed layer (overlaybd-merge)",
		ArgsUsage: "LAYER... OUT",
		Flags:     append(layerOutputFlags("none"), commitFlags()...),
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 2, -1); err != nil {
				return err
			}
			out, err := parseLayerOutput(c)
			if err != nil {
				return err
			}
			opts, err := parseCommitOptions(c)
			if err != nil {
				return err
			}
			args := c.Args().Slice()
			im, closeFn, err := openStack(args[:len(args)-1], "", "")
			if err != nil {
				return err
			}
			defer closeFn()
			src, err := im.CommitSource()
			if err != nil {
				return err
			}
			return writeLayer(args[len(args)-1], src, opts, out, c.Bool("quiet"))
		},
	}
}

// openStack opens layer files (bottom first) and an optional writable upper as one image.
func openStack(paths []string, upperData, upperIndex string) (*lsmt.Image, func(), error) {
	var files []*layer.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	if len(paths) > lsmt.MaxLayers {
		return nil, nil, fmt.Errorf("%d layers, at most %d can be stacked", len(paths), lsmt.MaxLayers)
	}
	layers := make([]*lsmt.Layer, 0, len(paths))
	for _, p := range paths {
		f, err := layer.OpenFile(p)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		files = append(files, f)
		layers = append(layers, f.Layer)
	}
	var upper *lsmt.Writable
	if upperData != "" {
		var err error
		if upper, err = openWritable(upperData, upperIndex); err != nil {
			closeAll()
			return nil, nil, err
		}
	}
	im, err := lsmt.NewImage(layers, upper)
	if err != nil {
		closeAll()
		if upper != nil {
			upper.Close()
		}
		return nil, nil, err
	}
	return im, func() {
		closeAll()
		if upper != nil {
			upper.Close()
		}
	}, nil
}
