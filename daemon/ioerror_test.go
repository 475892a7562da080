package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/zfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// failingTarget fails every read the way a corrupt remote layer does.
type failingTarget struct{ err error }

func (f failingTarget) ReadAt([]byte, int64) (int, error)  { return 0, f.err }
func (f failingTarget) WriteAt([]byte, int64) (int, error) { return 0, f.err }
func (f failingTarget) Flush() error                       { return nil }
func (f failingTarget) Size() int64                        { return 1 << 30 }

// Every EIO a device gets is logged at warn with the device, the offset, the
// layer's digest and the reason; a flood of them is rate-limited but all counted.
func TestIOErrorLogged(t *testing.T) {
	const digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	cause := &image.LayerError{Layer: 2, Digest: digest, Name: "https://r.example/v2/app/blobs/" + digest, Off: 4096,
		Err: &zfile.BlockError{Block: 1, Off: 4096, Len: 100, Tries: 4, Err: zfile.ErrChecksum}}
	core, logs := observer.New(zapcore.InfoLevel)
	m := &Manager{lg: zap.New(core)}
	m.ioLog = ioErrorLogger(m.lg)
	ct := &countingTarget{t: failingTarget{err: fmt.Errorf("lsmt: reading backing data: %w", cause)}, id: 7, lg: m.ioLog}

	if _, err := ct.ReadAt(make([]byte, 4096), 8192); err == nil {
		t.Fatal("read succeeded")
	}
	entries := logs.All()
	if len(entries) != 1 || entries[0].Level != zapcore.WarnLevel || !strings.Contains(entries[0].Message, "EIO") {
		t.Fatalf("log entries %+v, want one warning about EIO", entries)
	}
	f := entries[0].ContextMap()
	if f["device"] != int64(7) || f["offset"] != int64(8192) || f["digest"] != digest || f["layer"] != int64(2) ||
		f["layerOffset"] != int64(4096) || !strings.Contains(fmt.Sprint(f["reason"]), "checksum mismatch") {
		t.Fatalf("fields %v: want device 7, offset 8192, layer 2 %s at 4096, a checksum reason", f, digest)
	}

	for range 5000 {
		ct.ReadAt(make([]byte, 512), 0)
	}
	if n := ct.readErrs.Load(); n != 5001 {
		t.Errorf("%d read errors counted, want 5001", n)
	}
	// 10 a second, then every 100th: well under 5001 even across a second boundary.
	if n := logs.Len(); n > 200 {
		t.Errorf("%d log lines for 5001 errors: not rate-limited", n)
	}
}

// The same through a real image: a lower layer (a local ZFile) with corrupt
// blocks. The log names the layer's digest from the config.
func TestIOErrorOfCorruptLayerLogged(t *testing.T) {
	const bstack = "../testdata/golden/reference/b_stack"
	const digest = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	dir := t.TempDir()
	b, err := os.ReadFile(bstack + "/merged.lz4.zfile")
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 4; i < len(b)/2; i += 4096 {
		b[i] ^= 0xff
	}
	bad := filepath.Join(dir, "layer.zfile")
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.ParseImageConfig([]byte(`{"lowers":[{"file":"`+bad+`","digest":"`+digest+`"}]}`), "")
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Open(context.Background(), cfg, image.Options{Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	core, logs := observer.New(zapcore.WarnLevel)
	ct := &countingTarget{t: img, id: 4, lg: ioErrorLogger(zap.New(core))}
	var failed int64 = -1
	buf := make([]byte, 1<<20)
	for off := int64(0); off < ct.Size(); off += int64(len(buf)) {
		if _, err := ct.ReadAt(buf, off); err != nil {
			failed = off
			break
		}
	}
	if failed < 0 {
		t.Fatal("no read failed")
	}
	e := logs.All()
	if len(e) != 1 {
		t.Fatalf("%d log entries, want 1: %v", len(e), e)
	}
	f := e[0].ContextMap()
	if f["device"] != int64(4) || f["offset"] != failed || f["digest"] != digest || f["layer"] != int64(0) || f["blob"] != bad ||
		!strings.Contains(fmt.Sprint(f["reason"]), "checksum") {
		t.Fatalf("fields %v: want device 4, offset %d, layer 0 %s (%s), a checksum reason", f, failed, digest, bad)
	}
}
