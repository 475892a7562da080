package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/lsmt"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

func importCommand() *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "build a sealed layer whose virtual disk equals a raw image (holes are skipped)",
		ArgsUsage: "RAW OUT",
		Flags:     append(append(layerOutputFlags("none"), commitFlags()...), forceFlag()),
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 2, 2); err != nil {
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
			o := outputSpec{dst: c.Args().Get(1), force: c.Bool("force"), inputs: []string{c.Args().Get(0)}}
			if err := checkOutput(o); err != nil {
				return err
			}
			f, err := os.Open(c.Args().Get(0))
			if err != nil {
				return err
			}
			defer f.Close()
			src, err := rawSource(f)
			if err != nil {
				return fmt.Errorf("%s: %w", f.Name(), err)
			}
			return writeLayer(o, src, opts, out, quiet(c))
		},
	}
}

// rawSource maps the data runs of a raw image (found with SEEK_DATA/SEEK_HOLE) to
// segments pointing at the same offsets of the file. The virtual size is the file size
// rounded up to a sector; the partial last sector reads as zeros past EOF.
func rawSource(f *os.File) (lsmt.Source, error) {
	st, err := f.Stat()
	if err != nil {
		return lsmt.Source{}, err
	}
	size := st.Size()
	if size == 0 {
		return lsmt.Source{}, errors.New("empty file: a disk image needs a size")
	}
	vsize := (size + lsmt.SectorSize - 1) / lsmt.SectorSize * lsmt.SectorSize
	if vsize != size {
		zap.L().Warn("raw image size is not a multiple of 512 bytes: the layer's disk is padded with zeros",
			zap.String("file", f.Name()), zap.Int64("size", size), zap.Int64("virtualSize", vsize))
	}
	var segs []lsmt.Segment
	add := func(from, to int64) { // byte range, sector-aligned outward
		s := uint64(from / lsmt.SectorSize)
		e := uint64((to + lsmt.SectorSize - 1) / lsmt.SectorSize)
		if n := len(segs); n > 0 && segs[n-1].End() > s {
			s = segs[n-1].End()
		}
		for s < e {
			l := min(e-s, lsmt.MaxLength)
			segs = append(segs, lsmt.Segment{Offset: s, Length: uint32(l), MOffset: s})
			s += l
		}
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off
		}
		if err != nil { // no SEEK_DATA support: the whole file is data
			add(off, size)
			break
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		add(data, min(hole, size))
		off = hole
	}
	if len(segs) > lsmt.MaxROIndexSize {
		return lsmt.Source{}, fmt.Errorf("%d data runs: more than a sealed layer's %d index entries", len(segs), lsmt.MaxROIndexSize)
	}
	return lsmt.Source{Segments: segs, Files: []io.ReaderAt{zeroPastEOF{f, size}}, VirtualSize: uint64(vsize)}, nil
}

// zeroPastEOF reads zeros beyond size instead of io.EOF.
type zeroPastEOF struct {
	r    io.ReaderAt
	size int64
}

func (z zeroPastEOF) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	if off < z.size {
		m := min(int64(len(p)), z.size-off)
		k, err := z.r.ReadAt(p[:m], off)
		if k < int(m) {
			return k, err
		}
		n = k
	}
	clear(p[n:])
	return len(p), nil
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write the virtual disk of a stack of layers (bottom first) as a raw image",
		ArgsUsage: "LAYER...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "raw image to write (sparse); - streams to stdout"},
			&cli.StringFlag{Name: "upper-data", Usage: "writable upper layer data file"},
			&cli.StringFlag{Name: "upper-index", Usage: "writable upper layer index file"},
			forceFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 && c.String("upper-data") == "" {
				return fmt.Errorf("export: no layers; usage: obd export [--upper-data D --upper-index I] -o OUT LAYER...")
			}
			if (c.String("upper-data") == "") != (c.String("upper-index") == "") && !upperIsSparse(c.String("upper-data")) {
				return fmt.Errorf("export: --upper-data and --upper-index go together")
			}
			dst := c.String("output")
			o := outputSpec{dst: dst, force: c.Bool("force"), inputs: append(c.Args().Slice(), c.String("upper-data"), c.String("upper-index"))}
			if dst != "-" {
				if err := checkOutput(o); err != nil {
					return err
				}
			}
			im, closeFn, err := openStack(c.Args().Slice(), c.String("upper-data"), c.String("upper-index"))
			if err != nil {
				return err
			}
			defer closeFn()
			if dst == "-" {
				prog := newProgress("export", im.Size(), quiet(c))
				defer prog.done()
				_, err := io.Copy(prog.writer(os.Stdout), io.NewSectionReader(im, 0, im.Size()))
				return err
			}
			return exportSparse(o, im, quiet(c))
		},
	}
}

func upperIsSparse(path string) bool {
	if path == "" {
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	return image.IsSparse(f)
}

// exportSparse writes only the mapped data of the image, leaving holes (and all-zero
// 4 KiB blocks) unwritten in a file truncated to the image size.
func exportSparse(o outputSpec, im *lsmt.Image, quiet bool) error {
	dst := o.dst
	src, err := im.CommitSource()
	if err != nil {
		return err
	}
	f, err := createAtomic(o)
	if err != nil {
		return err
	}
	if err := f.Truncate(im.Size()); err != nil {
		f.abort()
		return err
	}
	var total int64
	for _, s := range src.Segments {
		if !s.Zeroed {
			total += int64(s.Length) * lsmt.SectorSize
		}
	}
	prog := newProgress("export "+dst, total, quiet)
	buf := make([]byte, 1<<20)
	zero := make([]byte, 4096)
	for _, s := range src.Segments {
		if s.Zeroed || !s.Valid() {
			continue
		}
		off, end := int64(s.Offset)*lsmt.SectorSize, int64(s.End())*lsmt.SectorSize
		for off < end {
			n := min(end-off, int64(len(buf)))
			b := buf[:n]
			if _, err := im.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && off+n >= im.Size()) {
				f.abort()
				return fmt.Errorf("read virtual bytes [%d, %d): %w", off, off+n, err)
			}
			for i := int64(0); i < n; i += 4096 {
				blk := b[i:min(i+4096, n)]
				if bytes.Equal(blk, zero[:len(blk)]) {
					continue
				}
				if _, err := f.WriteAt(blk, off+i); err != nil {
					f.abort()
					return err
				}
			}
			prog.add(int(n))
			off += n
		}
	}
	prog.done()
	return f.commit()
}
