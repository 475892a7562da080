package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"github.com/urfave/cli/v2"
)

// inspection is what `obd inspect` reports; its JSON form is stable for scripts.
type inspection struct {
	File     string      `json:"file"`
	FileSize int64       `json:"fileSize"`
	Chain    []string    `json:"chain"` // wrappers outermost first, then the content kind
	Tar      *tarInfo    `json:"tar,omitempty"`
	ZFile    *zfileInfo  `json:"zfile,omitempty"`
	LSMT     *lsmtInfo   `json:"lsmt,omitempty"`
	Problems []string    `json:"problems,omitempty"`
	inner    io.ReaderAt // the unwrapped content
	layer    *lsmt.Layer // set for a sealed layer
}

type tarInfo struct {
	PayloadOffset int64 `json:"payloadOffset"`
	PayloadSize   int64 `json:"payloadSize"`
}

type zfileInfo struct {
	Algorithm     string `json:"algorithm"`
	BlockSize     int    `json:"blockSize"`
	Blocks        int64  `json:"blocks"`
	OriginalSize  int64  `json:"originalSize"`
	BlockCRC      bool   `json:"blockCRC"`
	HeaderDigest  string `json:"headerDigest"` // "verified" or "absent (legacy file)"
	HeaderFlags   string `json:"headerFlags"`
	BlockChecksum string `json:"blockChecksums"` // "ok", "not checked", or the first failure
}

type lsmtInfo struct {
	Kind          string `json:"kind"` // sealed, writable-data, writable-sparse, writable-index
	HeaderFlags   string `json:"headerFlags"`
	TrailerFlags  string `json:"trailerFlags,omitempty"`
	UUID          string `json:"uuid"`
	ParentUUID    string `json:"parentUUID"`
	VirtualSize   uint64 `json:"virtualSize"`
	UserTag       string `json:"userTag,omitempty"`
	IndexOffset   uint64 `json:"indexOffset,omitempty"`
	IndexEntries  uint64 `json:"indexEntries"` // as recorded, with padding entries
	ValidEntries  int    `json:"validEntries"`
	ZeroedEntries int    `json:"zeroedEntries"`
	DataBytes     uint64 `json:"dataBytes"` // bytes mapped by non-zeroed entries
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "describe a layer, ZFile or writable layer file: wrapping, uuids, sizes, entries, checksums",
		ArgsUsage: "FILE",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "no-verify", Usage: "skip checking every ZFile block CRC"},
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, 1); err != nil {
				return err
			}
			in, err := inspectFile(c.Args().Get(0), !c.Bool("no-verify"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(in); err != nil {
					return err
				}
			} else {
				printInspection(os.Stdout, in)
			}
			if len(in.Problems) > 0 {
				return fmt.Errorf("%s: %s", in.File, strings.Join(in.Problems, "; "))
			}
			return nil
		},
	}
}

func inspectFile(path string, verify bool) (*inspection, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	in := &inspection{File: path, FileSize: st.Size()}
	head := make([]byte, 512)
	n, _ := f.ReadAt(head, 0)
	if layer.IsDamagedTar(head[:n]) {
		// The reference would read such a blob as raw data; it is a broken wrapper.
		in.Chain = []string{"damaged tar"}
		in.Problems = append(in.Problems, "damaged tar: the ustar header at offset 0 fails its checksum")
		return in, nil
	}
	inner, isize, w, err := layer.Unwrap(f, st.Size(), path)
	if err != nil {
		return nil, err
	}
	in.Chain = w.Chain()
	if w.Tar {
		in.Tar = &tarInfo{PayloadOffset: w.TarPayloadOffset, PayloadSize: st.Size() - w.TarPayloadOffset}
		if w.ZFile == nil {
			in.Tar.PayloadSize = isize
		}
	}
	if z := w.ZFile; z != nil {
		info := z.Info()
		if w.Tar {
			in.Tar.PayloadSize = info.FileSize
		}
		zi := &zfileInfo{
			Algorithm: info.Algorithm.String(), BlockSize: info.BlockSize, Blocks: info.Blocks,
			OriginalSize: info.OriginalSize, BlockCRC: info.Verify, HeaderFlags: fmt.Sprintf("0x%x", info.Header.Flags),
			HeaderDigest: "verified", BlockChecksum: "not checked",
		}
		if !info.DigestChecked {
			zi.HeaderDigest = "absent (legacy file)"
		}
		if verify && info.Verify {
			if err := z.Verify(); err != nil {
				zi.BlockChecksum = err.Error()
				in.Problems = append(in.Problems, err.Error())
			} else {
				zi.BlockChecksum = "ok"
			}
		} else if !info.Verify {
			zi.BlockChecksum = "none stored"
		}
		in.ZFile = zi
	}
	in.LSMT, in.layer, err = inspectLSMT(inner, isize, path)
	switch {
	case err != nil:
		in.Chain = append(in.Chain, "unknown")
		in.Problems = append(in.Problems, err.Error())
	case in.LSMT != nil:
		in.Chain = append(in.Chain, "lsmt:"+in.LSMT.Kind)
	default:
		in.Chain = append(in.Chain, "raw")
		if w.ZFile == nil {
			// A ZFile of any data is a ZFile; anything else without an LSMT
			// inside is not a layer.
			in.Problems = append(in.Problems, "not an OverlayBD layer: no ZFile or LSMT header found")
		}
	}
	return in, nil
}

// inspectLSMT describes an LSMT file of any kind; (nil, nil, nil) when r holds no LSMT header.
func inspectLSMT(r io.ReaderAt, size int64, name string) (*lsmtInfo, *lsmt.Layer, error) {
	if size < lsmt.HeaderSize {
		return nil, nil, nil
	}
	b := make([]byte, lsmt.HeaderSize)
	if _, err := r.ReadAt(b, 0); err != nil {
		return nil, nil, fmt.Errorf("read LSMT header: %w", err)
	}
	var h lsmt.HeaderTrailer
	if err := h.UnmarshalBinary(b); err != nil {
		return nil, nil, nil // not an LSMT file
	}
	li := &lsmtInfo{HeaderFlags: fmt.Sprintf("0x%x", h.Flags), UUID: h.UUID.String(), ParentUUID: h.ParentUUID.String(),
		VirtualSize: h.VirtualSize, UserTag: strings.TrimRight(string(h.UserTag), "\x00")}
	if l, err := lsmt.OpenLayer(r, size); err == nil {
		t := l.Trailer()
		li.Kind = "sealed"
		li.TrailerFlags = fmt.Sprintf("0x%x", t.Flags)
		li.UUID, li.ParentUUID, li.VirtualSize = t.UUID.String(), t.ParentUUID.String(), t.VirtualSize
		li.UserTag = strings.TrimRight(string(t.UserTag), "\x00")
		li.IndexOffset, li.IndexEntries = t.IndexOffset, t.IndexSize
		countEntries(li, l.Segments())
		return li, l, nil
	} else if h.IsDataFile() && h.IsSealed() {
		return li, nil, err // a sealed header but the layer does not open
	}
	switch {
	case h.IsDataFile() && h.IsSparse():
		li.Kind = "writable-sparse"
	case h.IsDataFile():
		li.Kind = "writable-data"
	default:
		li.Kind = "writable-index"
		li.IndexOffset = h.IndexOffset
		n := (size - lsmt.HeaderSize) / lsmt.SegmentSize
		li.IndexEntries = uint64(n)
		segs := make([]lsmt.Segment, 0, min(n, 1<<20))
		buf := make([]byte, 64<<10)
		for off := int64(lsmt.HeaderSize); off+lsmt.SegmentSize <= size; off += int64(len(buf)) {
			k, err := r.ReadAt(buf, off)
			for i := 0; i+lsmt.SegmentSize <= k; i += lsmt.SegmentSize {
				segs = append(segs, lsmt.DecodeSegment(buf[i:]))
			}
			if err != nil {
				break
			}
		}
		countEntries(li, segs) // log records: later ones may overwrite earlier ones
	}
	return li, nil, nil
}

func countEntries(li *lsmtInfo, segs []lsmt.Segment) {
	for _, s := range segs {
		if !s.Valid() {
			continue
		}
		li.ValidEntries++
		if s.Zeroed {
			li.ZeroedEntries++
		} else {
			li.DataBytes += uint64(s.Length) * lsmt.SectorSize
		}
	}
}

func printInspection(w io.Writer, in *inspection) {
	fmt.Fprintf(w, "file:            %s (%d bytes)\n", in.File, in.FileSize)
	fmt.Fprintf(w, "chain:           %s\n", strings.Join(in.Chain, " -> "))
	if t := in.Tar; t != nil {
		fmt.Fprintf(w, "tar:             payload at %d, %d bytes\n", t.PayloadOffset, t.PayloadSize)
	}
	if z := in.ZFile; z != nil {
		fmt.Fprintf(w, "zfile:           %s, %d-byte blocks x %d, original size %d, header flags %s\n", z.Algorithm, z.BlockSize, z.Blocks, z.OriginalSize, z.HeaderFlags)
		fmt.Fprintf(w, "  header digest: %s\n  block CRCs:    %s\n", z.HeaderDigest, z.BlockChecksum)
	}
	if l := in.LSMT; l != nil {
		fmt.Fprintf(w, "lsmt:            %s layer, header flags %s", l.Kind, l.HeaderFlags)
		if l.TrailerFlags != "" {
			fmt.Fprintf(w, ", trailer flags %s", l.TrailerFlags)
		}
		fmt.Fprintf(w, "\n  uuid:          %s\n  parent uuid:   %s\n  virtual size:  %d (%s)\n", l.UUID, l.ParentUUID, l.VirtualSize, humanBytes(l.VirtualSize))
		if l.UserTag != "" {
			fmt.Fprintf(w, "  user tag:      %q\n", l.UserTag)
		}
		fmt.Fprintf(w, "  index:         %d entries recorded, %d valid (%d zeroed), %s of data mapped\n", l.IndexEntries, l.ValidEntries, l.ZeroedEntries, humanBytes(l.DataBytes))
	}
	for _, p := range in.Problems {
		fmt.Fprintf(w, "PROBLEM:         %s\n", p)
	}
}

func humanBytes(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
