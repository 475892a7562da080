package daemon

import (
	"fmt"
	"strings"
	"testing"

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
