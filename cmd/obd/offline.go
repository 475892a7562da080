package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/tarwrap"
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

func forceFlag() cli.Flag {
	return &cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "replace an existing output file (never one of the inputs)"}
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
			&cli.BoolFlag{Name: "mkfs", Usage: "format the new disk as ext4 (the reference's parameters: no journal, 4K blocks)"},
			forceFlag(),
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 3, 3); err != nil {
				return err
			}
			size, err := parseSize(c.Args().Get(2))
			if err != nil {
				return err
			}
			if size == 0 {
				return fmt.Errorf("SIZE 0: a new disk needs a size, e.g. 64GiB")
			}
			// overlaybd-create's bare number is GiB: "64" here would be a 64-byte disk.
			if arg := c.Args().Get(2); size < 1<<20 && strings.Trim(arg, "0123456789") == "" {
				return fmt.Errorf("SIZE %s is %d bytes, too small for a disk: give a unit (%sGiB?); a bare number is GiB only for overlaybd-create", arg, size, arg)
			}
			spec := createSpec{data: c.Args().Get(0), index: c.Args().Get(1), force: c.Bool("force"), mkfs: c.Bool("mkfs"),
				opts: lsmt.CreateOptions{VirtualSize: uint64(size), Sparse: c.Bool("sparse")}}
			if s := c.String("parent-uuid"); s != "" {
				if spec.opts.ParentUUID, err = lsmt.ParseUUID(s); err != nil {
					return fmt.Errorf("--parent-uuid: %w", err)
				}
			}
			if s := c.String("uuid"); s != "" {
				if spec.opts.UUID, err = lsmt.ParseUUID(s); err != nil {
					return fmt.Errorf("--uuid: %w", err)
				}
			}
			return createLayer(spec)
		},
	}
}

// createSpec describes a new writable layer.
type createSpec struct {
	data, index string
	opts        lsmt.CreateOptions
	force       bool // replace existing files (never a layer in use)
	mkfs        bool
	// emptyIndex creates INDEX (empty) for a sparse layer too, as overlaybd-create does.
	emptyIndex bool
}

// createLayer writes the new layer's files under temporary names and renames them
// into place: DATA and INDEX appear complete (formatted, with --mkfs) or not at all.
func createLayer(s createSpec) (err error) {
	if s.opts.VirtualSize%lsmt.SectorSize != 0 {
		return fmt.Errorf("SIZE %d is not a multiple of %d", s.opts.VirtualSize, lsmt.SectorSize)
	}
	withIndex := !s.opts.Sparse || s.emptyIndex
	if withIndex && (s.data == s.index || sameFile(s.data, s.index)) {
		return fmt.Errorf("DATA %s and INDEX %s are the same file", s.data, s.index)
	}
	if err := checkOutput(outputSpec{dst: s.data, force: s.force}); err != nil {
		return err
	}
	if withIndex {
		if err := checkOutput(outputSpec{dst: s.index, force: s.force}); err != nil {
			return err
		}
	}
	data, err := createTemp(s.data)
	if err != nil {
		return err
	}
	var index *os.File
	defer func() {
		if err != nil {
			data.Close()
			removeTemp(data.Name())
			if index != nil {
				index.Close()
				removeTemp(index.Name())
			}
		}
	}()
	if withIndex {
		if index, err = createTemp(s.index); err != nil {
			return err
		}
	}
	lindex := index
	if s.opts.Sparse {
		lindex = nil
	}
	w, err := lsmt.Create(data, lindex, s.opts)
	if err != nil {
		return fmt.Errorf("%s: %w", s.data, err)
	}
	if s.mkfs {
		if err = mkfsLayer(w); err != nil {
			w.Close()
			return err
		}
	}
	uuid := w.Header().UUID
	if err = w.Close(); err != nil {
		return fmt.Errorf("%s: %w", s.data, err)
	}
	if index != nil && s.opts.Sparse {
		if err = index.Close(); err != nil {
			return err
		}
	}
	for _, f := range []*os.File{data, index} {
		if f != nil {
			if err = os.Chmod(f.Name(), 0o644); err != nil {
				return err
			}
		}
	}
	if err = renameTemp(data.Name(), s.data, s.force); err != nil {
		return err
	}
	if index != nil {
		if err = renameTemp(index.Name(), s.index, s.force); err != nil {
			os.Remove(s.data) // ours, just renamed: the layer is created whole or not at all
			return err
		}
	}
	zap.L().Info("created writable layer", zap.String("data", s.data), zap.String("index", s.index),
		zap.Uint64("size", s.opts.VirtualSize), zap.Bool("sparse", s.opts.Sparse), zap.Bool("mkfs", s.mkfs), zap.Stringer("uuid", uuid))
	return nil
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
		Flags: append(append(layerOutputFlags("none"), commitFlags()...), forceFlag(),
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
				return commitSealed(c.Args().Get(0), outputSpec{dst: c.Args().Get(1), force: c.Bool("force")}, opts, out, quiet(c))
			}
			if err := needArgs(c, 3, 3); err != nil {
				return err
			}
			return commitWritable(c.Args().Get(0), c.Args().Get(1), outputSpec{dst: c.Args().Get(2), force: c.Bool("force")}, opts, out, quiet(c))
		},
	}
}

// commitSealed re-commits a sealed layer file (overlaybd-commit --commit_sealed).
func commitSealed(srcPath string, o outputSpec, opts lsmt.CommitOptions, out layerOutput, quiet bool) error {
	o.inputs = append(o.inputs, srcPath)
	if err := checkOutput(o); err != nil {
		return err
	}
	l, err := layer.OpenFile(srcPath)
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
	return writeLayer(o, src, opts, out, quiet)
}

// commitWritable packs a writable layer, locked while it is read, into a sealed layer.
func commitWritable(dataPath, indexPath string, o outputSpec, opts lsmt.CommitOptions, out layerOutput, quiet bool) error {
	o.inputs = append(o.inputs, dataPath, indexPath)
	if err := checkOutput(o); err != nil {
		return err
	}
	w, err := openWritable(dataPath, indexPath)
	if err != nil {
		return err
	}
	defer w.Close()
	return writeLayer(o, w.CommitSource(), opts, out, quiet)
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
			return sealLayer(c.Args().Get(0), c.Args().Get(1), []byte(c.String("message")))
		},
	}
}

func sealLayer(dataPath, indexPath string, msg []byte) error {
	w, err := openWritable(dataPath, indexPath)
	if err != nil {
		return err
	}
	if err := w.CloseSeal(msg); err != nil {
		w.Close()
		return err
	}
	return nil
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
			&cli.StringFlag{Name: "block-size", Aliases: []string{"bs"}, Value: "4K", Usage: "4K to 64K (a bare 4..64 is KiB, as overlaybd-zfile --bs)"},
			&cli.BoolFlag{Name: "tar", Aliases: []string{"t"}, Usage: "the ZFile is wrapped in a tar (written so, or read so)"},
			forceFlag(),
		},
		Action: func(c *cli.Context) error {
			src := c.Args().Get(0)
			if c.Bool("verify") {
				if err := needArgs(c, 1, 1); err != nil {
					return err
				}
				return verifyZFile(src)
			}
			if err := needArgs(c, 2, 2); err != nil {
				return err
			}
			o := outputSpec{dst: c.Args().Get(1), force: c.Bool("force")}
			if c.Bool("decompress") {
				return decompressZFile(src, o, quiet(c))
			}
			alg, err := zfile.ParseAlgorithm(c.String("algorithm"))
			if err != nil {
				return fmt.Errorf("--algorithm: %w", err)
			}
			bs, err := parseBlockSize(c.String("block-size"))
			if err != nil {
				return err
			}
			return compressZFile(src, o, zfile.Options{Algorithm: alg, BlockSize: bs, NoHeaderOverwrite: true}, c.Bool("tar"), quiet(c))
		},
	}
}

func verifyZFile(src string) error {
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

func decompressZFile(src string, o outputSpec, quiet bool) error {
	o.inputs = append(o.inputs, src)
	if o.dst != "-" {
		if err := checkOutput(o); err != nil {
			return err
		}
	}
	_, z, closeFn, err := openZFile(src)
	if err != nil {
		return err
	}
	defer closeFn()
	if o.dst == "-" {
		// WriteTo overlaps reading, decoding and writing, in order.
		_, err := z.WriteTo(os.Stdout)
		return err
	}
	f, err := createAtomic(o)
	if err != nil {
		return err
	}
	prog := newProgress(o.dst, z.Size(), quiet)
	// Each worker writes the segments it decodes at their offsets: no
	// hand-off of decoded bytes to another core, no waiting for order.
	_, err = z.WriteToAt(prog.writerAt(f))
	prog.done()
	if err != nil {
		f.abort()
		if be := (*zfile.BlockError)(nil); !errors.As(err, &be) {
			err = fmt.Errorf("%s: %w", o.dst, err) // the temporary file's name is not the one given
		}
		return err
	}
	return f.commit()
}

// compressZFile compresses src ("-": stdin) into a ZFile, tar-wrapped if tar.
func compressZFile(src string, o outputSpec, zo zfile.Options, tar, quiet bool) error {
	o.inputs = append(o.inputs, src)
	if o.dst != "-" {
		if err := checkOutput(o); err != nil {
			return err
		}
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
	if tar {
		// The tar header records the payload size, patched in when the payload ends.
		if o.dst == "-" {
			return errors.New("zfile -t: the tar wrapper is written to a file, not to stdout")
		}
		f, err := createAtomic(o)
		if err != nil {
			return err
		}
		tw, err := tarwrap.NewStreamWriter(f)
		if err == nil {
			prog := newProgress(o.dst, total, quiet)
			_, err = zfile.Compress(prog.writer(tw), in, zo)
			prog.done()
		}
		if err == nil {
			err = tw.Close()
		}
		if err != nil {
			f.abort()
			return err
		}
		return f.commit()
	}
	return writeStream(o, func(w io.Writer) error {
		_, err := zfile.Compress(w, in, zo)
		return err
	}, total, quiet)
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
	// A tar-wrapped ZFile (overlaybd-zfile -t) is read through its tar.
	inner, isize, w, err := layer.Unwrap(rawFile{f}, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, nil, nil, err
	}
	if w.ZFile != nil {
		return f, w.ZFile, func() { f.Close() }, nil
	}
	z, err := zfile.Open(inner, isize, zfile.WithName(path))
	if err != nil {
		f.Close()
		return nil, nil, nil, err
	}
	return f, z, func() { f.Close() }, nil
}

// writeStream runs fn on o.dst ("-" = stdout), atomically for a file.
func writeStream(o outputSpec, fn func(io.Writer) error, total int64, quiet bool) error {
	if o.dst == "-" {
		return fn(os.Stdout)
	}
	f, err := createAtomic(o)
	if err != nil {
		return err
	}
	prog := newProgress(o.dst, total, quiet)
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
		Flags:     append(append(layerOutputFlags("none"), commitFlags()...), forceFlag()),
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
			return mergeLayers(args[:len(args)-1], "", "", outputSpec{dst: args[len(args)-1], force: c.Bool("force")}, opts, out, quiet(c))
		},
	}
}

// mergeLayers flattens layer files (bottom first) and an optional writable upper into
// one sealed layer.
func mergeLayers(layers []string, upperData, upperIndex string, o outputSpec, opts lsmt.CommitOptions, out layerOutput, quiet bool) error {
	o.inputs = append(append(o.inputs, layers...), upperData, upperIndex)
	if err := checkOutput(o); err != nil {
		return err
	}
	im, closeFn, err := openStack(layers, upperData, upperIndex)
	if err != nil {
		return err
	}
	defer closeFn()
	src, err := im.CommitSource()
	if err != nil {
		return err
	}
	return writeLayer(o, src, opts, out, quiet)
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
