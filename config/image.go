// Package config reads the two JSON files that drive an OverlayBD device the way the
// reference daemon (overlaybd-tcmu) does: the per-device config.v1.json (ImageConfig)
// and the global /etc/overlaybd/overlaybd.json (GlobalConfig), and writes the per-device
// result file. Missing members take the reference's defaults, unknown members are
// ignored and a null member counts as missing. Where the reference would crash or
// silently misbehave on a bad value, Parse returns an error naming the field.
package config

import (
	_ "crypto/sha256" // go-digest accepts only digests whose hash is linked in
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	digest "github.com/opencontainers/go-digest"
)

// MaxLayers is the reference's MAX_LAYER_CNT: a stack holds at most this many lowers.
const MaxLayers = 65536

// Names of the files a layer directory (Layer.Dir) may hold.
const (
	CommitFileName       = "overlaybd.commit" // downloaded or committed blob
	LegacyCommitFileName = ".commit"          // older name of CommitFileName
	SealedFileName       = "overlaybd.sealed" // sealed writable layer, not yet committed
	DownloadFileName     = ".download"        // background download / "download" cache in progress
	TraceFileName        = "trace"            // prefetch trace of an acceleration layer
)

// Download configures the background full download of remote layers (docs/overlaybd-format.md §10).
type Download struct {
	// Enable turns background download on for remote layers that have a Dir.
	Enable bool
	// Delay is the wait in seconds before the first download starts (default 300).
	Delay int
	// DelayExtra is the upper bound of a random extra delay in seconds (default 30;
	// the daemon uses 30 when it is <= 0).
	DelayExtra int
	// MaxMBps throttles the download, in MiB/s (default 100).
	MaxMBps int
	// TryCnt is the number of attempts per layer (default 5).
	TryCnt int
	// BlockSize is the download unit in bytes (default 262144).
	BlockSize uint32
}

// DefaultDownload returns the reference's DownloadConfig defaults.
func DefaultDownload() Download {
	return Download{Delay: 300, DelayExtra: 30, MaxMBps: 100, TryCnt: 5, BlockSize: 262144}
}

// Layer is one entry of lowers[], a read-only layer. Paths are absolute after parsing.
type Layer struct {
	// File is an explicit local blob path; when set it is the only local candidate.
	File string
	// Dir is the layer directory holding overlaybd.commit / .commit / overlaybd.sealed,
	// the background download's .download file and an acceleration layer's trace.
	Dir string
	// Digest is the remote blob digest ("sha256:<64 lowercase hex>"), used when no
	// local file exists and to verify a background download.
	Digest string
	// Size is the blob size in bytes (for the download file).
	Size uint64
	// TargetFile is the local original OCI layer (tar or tar.gz) of a TurboOCI layer.
	TargetFile string
	// TargetDigest is the remote digest of the original OCI layer of a TurboOCI layer.
	TargetDigest string
	// GzipIndex is the local gzip index of a TurboOCI gzip target.
	GzipIndex string
}

// LocalCandidates lists, in the order the daemon tries them, the local files that may
// hold this layer's blob: File alone when set (the daemon goes remote if it cannot
// be opened), else Dir/overlaybd.commit, Dir/.commit, Dir/overlaybd.sealed.
func (l Layer) LocalCandidates() []string {
	if l.File != "" {
		return []string{l.File}
	}
	if l.Dir == "" {
		return nil
	}
	return []string{
		filepath.Join(l.Dir, CommitFileName),
		filepath.Join(l.Dir, LegacyCommitFileName),
		filepath.Join(l.Dir, SealedFileName),
	}
}

// FindLocal returns the first LocalCandidates entry that exists as a regular file.
func (l Layer) FindLocal() (string, bool) {
	for _, p := range l.LocalCandidates() {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, true
		}
	}
	return "", false
}

// Upper is the writable layer. Paths are absolute after parsing.
type Upper struct {
	// Index is the writable layer's index file.
	Index string
	// Data is the writable layer's data file.
	Data string
	// Target is the tar (TurboOCI warp RW layer); Data is then its fs meta file.
	Target string
	// GzipIndex is the gzip index of a gzipped Target.
	GzipIndex string
}

// ImageConfig is a parsed config.v1.json.
type ImageConfig struct {
	// RepoBlobURL is "https://<host>/v2/<repo>/blobs"; required if a layer is remote.
	RepoBlobURL string
	// Lowers are the read-only layers, bottom first.
	Lowers []Layer
	// Upper is the writable layer; the device is read-only unless Index and Data are set.
	Upper Upper
	// ResultFile receives "success" or "failed:<reason>" after device creation.
	ResultFile string
	// Download is the background download setting (see HasDownload).
	Download Download
	// HasDownload reports whether the file had its own "download" object; without it
	// InheritDownload copies the global one, as the daemon does.
	HasDownload bool
	// AccelerationLayer marks the last lower as a trace layer: it leaves the stack and
	// its Dir/trace is replayed.
	AccelerationLayer bool
	// RecordTracePath is a trace file: empty file = record, non-empty = replay.
	RecordTracePath string
	// Warnings are the file's unknown keys (with the nearest known one), to log and
	// show; the reference silently ignores them.
	Warnings []string
}

// ReadOnly reports whether the device has no writable layer: no upper.data. The
// reference also comes up read-only when only one of upper.index/upper.data is set;
// obd refuses an index without data (validate) and opens data without an index
// only if it is a sparse upper (image.OpenWritable), so a half-configured upper is
// an error instead of a silently read-only device.
func (c *ImageConfig) ReadOnly() bool {
	return c.Upper.Data == ""
}

// StackLowers is the acceleration-layer rule: it returns the lowers that form the
// stack and, with accelerationLayer set, the trace file of the last lower (its
// Dir/trace; "" if it has no dir), which leaves the stack and is replayed instead.
func (c *ImageConfig) StackLowers() (lowers []Layer, tracePath string) {
	if !c.AccelerationLayer || len(c.Lowers) == 0 {
		return c.Lowers, ""
	}
	n := len(c.Lowers) - 1
	if d := c.Lowers[n].Dir; d != "" {
		tracePath = filepath.Join(d, TraceFileName)
	}
	return c.Lowers[:n], tracePath
}

// BlobURL is the registry URL of a blob: RepoBlobURL + "/" (if missing) + digest.
func (c *ImageConfig) BlobURL(digest string) (string, error) {
	if c.RepoBlobURL == "" {
		return "", errors.New("empty repoBlobUrl")
	}
	if strings.HasSuffix(c.RepoBlobURL, "/") {
		return c.RepoBlobURL + digest, nil
	}
	return c.RepoBlobURL + "/" + digest, nil
}

// InheritDownload copies the global download settings when the image config has no
// "download" object of its own and the global file has one (else defaults stay).
func (c *ImageConfig) InheritDownload(g *GlobalConfig) {
	if !c.HasDownload && g != nil && g.HasDownload {
		c.Download = g.Download
	}
}

// LoadImageConfig reads and parses a config.v1.json. Relative paths in it are
// resolved against the directory of path.
func LoadImageConfig(path string) (*ImageConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := ParseImageConfig(data, filepath.Dir(abs))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseImageConfig parses config.v1.json content. Relative paths (file, dir,
// targetFile, gzipIndex, upper.*, resultFile, recordTracePath) are joined to baseDir,
// normally the config file's directory; with baseDir "" they stay as written.
func ParseImageConfig(data []byte, baseDir string) (*ImageConfig, error) {
	if !json.Valid(data) {
		return nil, fmt.Errorf("invalid JSON: %w", jsonSyntaxError(data))
	}
	root, err := parseObject(data, "")
	if err != nil {
		return nil, err
	}
	c := &ImageConfig{Download: DefaultDownload()}
	if err := firstErr(
		root.str("repoBlobUrl", &c.RepoBlobURL),
		root.str("resultFile", &c.ResultFile),
		root.boolean("accelerationLayer", &c.AccelerationLayer),
		root.str("recordTracePath", &c.RecordTracePath),
	); err != nil {
		return nil, err
	}
	lowers, err := root.array("lowers")
	if err != nil {
		return nil, err
	}
	if len(lowers) > MaxLayers {
		return nil, fmt.Errorf("lowers: %d layers, want at most %d", len(lowers), MaxLayers)
	}
	for i, raw := range lowers {
		l, err := parseLayer(raw, fmt.Sprintf("lowers[%d]", i))
		if err != nil {
			return nil, err
		}
		c.Lowers = append(c.Lowers, l)
	}
	if up, err := root.child("upper"); err != nil {
		return nil, err
	} else if up != nil {
		if err := firstErr(
			up.str("index", &c.Upper.Index),
			up.str("data", &c.Upper.Data),
			up.str("target", &c.Upper.Target),
			up.str("gzipIndex", &c.Upper.GzipIndex),
		); err != nil {
			return nil, err
		}
	}
	if dl, err := root.child("download"); err != nil {
		return nil, err
	} else if dl != nil {
		c.HasDownload = true
		if err := parseDownload(dl, &c.Download); err != nil {
			return nil, err
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	c.resolve(baseDir)
	c.Warnings = unknownKeys(data, imageKeys)
	return c, nil
}

func parseLayer(raw json.RawMessage, path string) (Layer, error) {
	var l Layer
	o, err := parseObject(raw, path)
	if err != nil {
		return l, err
	}
	err = firstErr(
		o.str("file", &l.File),
		o.str("dir", &l.Dir),
		o.str("digest", &l.Digest),
		o.uint64("size", &l.Size),
		o.str("targetFile", &l.TargetFile),
		o.str("targetDigest", &l.TargetDigest),
		o.str("gzipIndex", &l.GzipIndex),
	)
	return l, err
}

func parseDownload(o *object, d *Download) error {
	return firstErr(
		o.boolean("enable", &d.Enable),
		o.int32("delay", &d.Delay),
		o.int32("delayExtra", &d.DelayExtra),
		o.int32("maxMBps", &d.MaxMBps),
		o.int32("tryCnt", &d.TryCnt),
		o.uint32("blockSize", &d.BlockSize),
	)
}

// validate rejects what the daemon would fail on later (or loop on) with a message
// naming the field.
func (c *ImageConfig) validate() error {
	if c.AccelerationLayer && c.RecordTracePath != "" {
		return errors.New("accelerationLayer: cannot record a trace (recordTracePath) while an acceleration layer exists")
	}
	if c.RepoBlobURL != "" && !strings.HasPrefix(c.RepoBlobURL, "http://") && !strings.HasPrefix(c.RepoBlobURL, "https://") {
		return fmt.Errorf("repoBlobUrl %q: want http(s)://<host>/v2/<repo>/blobs", c.RepoBlobURL)
	}
	for i, l := range c.Lowers {
		if l.File == "" && l.Dir == "" && l.Digest == "" {
			return fmt.Errorf("lowers[%d]: want file, dir or digest, found none", i)
		}
		if err := checkDigest(fmt.Sprintf("lowers[%d].digest", i), l.Digest); err != nil {
			return err
		}
		if err := checkDigest(fmt.Sprintf("lowers[%d].targetDigest", i), l.TargetDigest); err != nil {
			return err
		}
		if l.GzipIndex != "" && l.TargetFile == "" && l.TargetDigest == "" {
			return fmt.Errorf("lowers[%d].gzipIndex: set without targetFile or targetDigest", i)
		}
	}
	if c.Upper.Index != "" && c.Upper.Data == "" {
		return errors.New("upper.index: set without upper.data (the device would come up read-only); set both, or neither for a read-only device")
	}
	if c.Upper.Target != "" && (c.Upper.Index == "" || c.Upper.Data == "") {
		return errors.New("upper.target: set without upper.index and upper.data")
	}
	return validateDownload("download", c.Download)
}

func validateDownload(field string, d Download) error {
	if d.BlockSize == 0 {
		return fmt.Errorf("%s.blockSize: must be > 0", field)
	}
	return nil
}

// checkDigest accepts "" (unset) or "sha256:<64 lowercase hex>", the only form the
// daemon can verify a download against.
func checkDigest(field, d string) error {
	if d == "" {
		return nil
	}
	if p, err := digest.Parse(d); err != nil || p.Algorithm() != digest.SHA256 {
		return fmt.Errorf("%s: want sha256:<64 hex>, found %q", field, d)
	}
	return nil
}

func (c *ImageConfig) resolve(baseDir string) {
	abs := func(p *string) {
		if baseDir != "" && *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(baseDir, *p)
		}
	}
	for i := range c.Lowers {
		l := &c.Lowers[i]
		abs(&l.File)
		abs(&l.Dir)
		abs(&l.TargetFile)
		abs(&l.GzipIndex)
	}
	abs(&c.Upper.Index)
	abs(&c.Upper.Data)
	abs(&c.Upper.Target)
	abs(&c.Upper.GzipIndex)
	abs(&c.ResultFile)
	abs(&c.RecordTracePath)
}

// jsonSyntaxError returns the decoder's error with the byte offset it stopped at.
func jsonSyntaxError(data []byte) error {
	var v any
	err := json.Unmarshal(data, &v)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("offset %d: %w", se.Offset, err)
	}
	if err == nil {
		err = errors.New("malformed document")
	}
	return err
}

// WriteResult implements the result file protocol: after device creation the file is
// truncated and holds exactly "success" (err == nil) or "failed:<err>". An empty
// resultFile means the config asked for none, as in the daemon.
func WriteResult(resultFile string, err error) error {
	if resultFile == "" {
		return nil
	}
	msg := "success"
	if err != nil {
		msg = "failed:" + err.Error()
	}
	if werr := os.WriteFile(resultFile, []byte(msg), 0o644); werr != nil {
		return fmt.Errorf("config: write result file: %w", werr)
	}
	return nil
}
