package convert

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/obd-project/obd/ext4"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
)

// DefaultVSize is the virtual disk size of converted images (the reference's 64 GiB).
const DefaultVSize = 64 << 30

// Options configure a Builder.
type Options struct {
	WorkDir   string          // per-layer files go to WorkDir/NNNN/
	VSize     int64           // bytes; 0 = DefaultVSize
	Algorithm zfile.Algorithm // 0 = LZ4
	BlockSize int             // ZFile block size; 0 = 4 KiB
}

// Layer is one committed OverlayBD layer blob.
type Layer struct {
	Path         string // overlaybd.commit: LSMT in ZFile in tar
	Digest       string // sha256:... of the blob
	Size         int64
	SrcDiffID    string    // sha256 of the source layer's uncompressed tar
	ChainID      string    // of the source layers up to this one
	UUID         lsmt.UUID // derived from ChainID
	Stats        ApplyStats
	ChangedBytes int64 // bytes of changed blocks the layer stores
}

// Builder converts layers one after another, each on top of the ones before.
type Builder struct {
	opts   Options
	lowers []*layer.File
	layers []Layer
}

// NewBuilder starts an image. Close releases the layer files it keeps open.
func NewBuilder(opts Options) (*Builder, error) {
	if opts.VSize == 0 {
		opts.VSize = DefaultVSize
	}
	if opts.VSize < ext4.MinMkfsSize || opts.VSize%lsmt.SectorSize != 0 {
		return nil, fmt.Errorf("convert: virtual size %d bytes: at least %d and a multiple of 512", opts.VSize, ext4.MinMkfsSize)
	}
	if opts.WorkDir == "" {
		return nil, errors.New("convert: no work directory")
	}
	if err := os.MkdirAll(opts.WorkDir, 0o755); err != nil {
		return nil, err
	}
	return &Builder{opts: opts}, nil
}

// Layers returns the layers committed so far, bottom first.
func (b *Builder) Layers() []Layer { return b.layers }

// Close closes the committed layers (their files stay in the work directory).
func (b *Builder) Close() error {
	var first error
	for _, l := range b.lowers {
		if err := l.Close(); err != nil && first == nil {
			first = err
		}
	}
	b.lowers = nil
	return first
}

// ChainUUID is the LSMT uuid the reference derives from a chainID: its first 32 hex
// digits as 8-4-4-4-12.
func ChainUUID(chainID string) (lsmt.UUID, error) {
	h := strings.TrimPrefix(chainID, "sha256:")
	if len(h) < 32 {
		return lsmt.UUID{}, fmt.Errorf("convert: chain id %q too short", chainID)
	}
	return lsmt.ParseUUID(h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32])
}

// NextChainID is the OCI chainID of a layer with diffID over parent ("" for the first).
func NextChainID(parent, diffID string) string {
	if parent == "" {
		return diffID
	}
	s := sha256.Sum256([]byte(parent + " " + diffID))
	return "sha256:" + hex.EncodeToString(s[:])
}

// AddLayer applies the uncompressed layer tar r on top of the layers so far and
// commits the result. srcDiffID is the tar's sha256 if known ("" computes it from r).
func (b *Builder) AddLayer(r io.Reader, srcDiffID string) (Layer, error) {
	return b.addLayer(r, srcDiffID, false)
}

// addLayer is AddLayer; with checked, r itself verifies that the tar's digest is
// diffID (a spool does) and fails at its end if not.
func (b *Builder) addLayer(r io.Reader, diffID string, checked bool) (Layer, error) {
	n := len(b.layers)
	dir := filepath.Join(b.opts.WorkDir, fmt.Sprintf("%04d", n))
	if err := os.RemoveAll(dir); err != nil {
		return Layer{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Layer{}, err
	}
	data, err := os.Create(filepath.Join(dir, "writable_data"))
	if err != nil {
		return Layer{}, err
	}
	defer data.Close()
	index, err := os.Create(filepath.Join(dir, "writable_index"))
	if err != nil {
		return Layer{}, err
	}
	defer index.Close()
	var fixedUUID lsmt.UUID // the writable's uuid does not reach the output
	fixedUUID[0] = 1
	vsize := uint64(0)
	if n == 0 {
		vsize = uint64(b.opts.VSize)
	}
	up, err := lsmt.Create(data, index, lsmt.CreateOptions{VirtualSize: vsize, UUID: fixedUUID})
	if err != nil {
		return Layer{}, err
	}
	defer up.Close()
	lowers := make([]*lsmt.Layer, len(b.lowers))
	for i, l := range b.lowers {
		lowers[i] = l.Layer
	}
	img, err := lsmt.NewImage(lowers, up)
	if err != nil {
		return Layer{}, err
	}
	if n == 0 {
		if err := ext4.Mkfs(img, b.opts.VSize); err != nil {
			return Layer{}, err
		}
	}
	w, err := ext4.OpenWriter(img)
	if err != nil {
		return Layer{}, fmt.Errorf("convert: layer %d: %w", n, err)
	}
	var digester hash.Hash
	hashed := make(chan struct{})
	if !checked {
		// The diff_id is hashed in another goroutine, overlapping with the apply.
		digester = sha256.New()
		pr, pw := io.Pipe()
		go func(r io.Reader) {
			defer close(hashed)
			buf := make([]byte, 1<<20)
			for {
				k, err := io.ReadFull(r, buf)
				if k > 0 {
					if _, werr := pw.Write(buf[:k]); werr != nil {
						return
					}
					digester.Write(buf[:k])
				}
				if err == io.EOF || err == io.ErrUnexpectedEOF {
					pw.Close()
					return
				}
				if err != nil {
					pw.CloseWithError(err)
					return
				}
			}
		}(r)
		defer func() { pr.Close(); <-hashed }()
		r = pr
	}
	br := bufio.NewReaderSize(r, 1<<20)
	stats, err := ApplyTar(w, br)
	if err != nil {
		return Layer{}, fmt.Errorf("convert: layer %d: %w", n, err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil { // the rest, for the digest
		return Layer{}, fmt.Errorf("convert: layer %d: reading tar: %w", n, err)
	}
	if digester != nil {
		<-hashed
		got := "sha256:" + hex.EncodeToString(digester.Sum(nil))
		if diffID != "" && diffID != got {
			return Layer{}, fmt.Errorf("convert: layer %d: uncompressed tar has digest %s, the image config says %s", n, got, diffID)
		}
		diffID = got
	}
	if err := w.Close(); err != nil {
		return Layer{}, fmt.Errorf("convert: layer %d: %w", n, err)
	}
	l := Layer{SrcDiffID: diffID, Stats: stats, Path: filepath.Join(dir, "overlaybd.commit")}
	parentChain, parentUUID := "", lsmt.UUID{}
	if n > 0 {
		parentChain, parentUUID = b.layers[n-1].ChainID, b.layers[n-1].UUID
	}
	l.ChainID = NextChainID(parentChain, diffID)
	if l.UUID, err = ChainUUID(l.ChainID); err != nil {
		return Layer{}, err
	}
	src := up.CommitSource()
	for _, s := range src.Segments {
		if s.Valid() && !s.Zeroed {
			l.ChangedBytes += int64(s.Length) * lsmt.SectorSize
		}
	}
	if err := commit(l.Path, src, lsmt.CommitOptions{UUID: l.UUID, ParentUUID: parentUUID}, b.opts); err != nil {
		return Layer{}, fmt.Errorf("convert: layer %d: %w", n, err)
	}
	if l.Digest, l.Size, err = FileDigest(l.Path); err != nil {
		return Layer{}, err
	}
	lf, err := layer.OpenFile(l.Path)
	if err != nil {
		return Layer{}, fmt.Errorf("convert: reopening layer %d: %w", n, err)
	}
	b.lowers = append(b.lowers, lf)
	b.layers = append(b.layers, l)
	// The writable files are not needed any more.
	os.Remove(data.Name())
	os.Remove(index.Name())
	return l, nil
}

// commit writes src like overlaybd-commit -z -t: LSMT in ZFile in a tar.
func commit(path string, src lsmt.Source, co lsmt.CommitOptions, o Options) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw, err := tarwrap.NewStreamWriter(f)
	if err != nil {
		return err
	}
	zw, err := zfile.NewWriter(tw, zfile.Options{Algorithm: o.Algorithm, BlockSize: o.BlockSize})
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(zw, 1<<20)
	if err := lsmt.Commit(bw, src, co); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// FileDigest is the sha256 digest ("sha256:HEX") and size of a file: a layer
// blob's descriptor.
func FileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	// Large reads: the file is read back once, right after it was written.
	n, err := io.CopyBuffer(h, struct{ io.Reader }{f}, make([]byte, 1<<20))
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", path, err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}
