package image

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/obd-project/obd/zfile"
)

// A corrupt block of a lower layer fails the read with a LayerError naming the
// layer, so the device's error log can say which one.
func TestReadErrorNamesTheLayer(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "merged.lz4.zfile")
	b, err := os.ReadFile(bstack + "/merged.lz4.zfile")
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 4; i < len(b)/2; i += 4096 {
		b[i] ^= 0xff // data blocks in the first half of the payload
	}
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := parse(t, `{"lowers":[{"file":"b0.commit"},{"file":"`+bad+`"}]}`)
	im, err := Open(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	_, err = io.Copy(io.Discard, io.NewSectionReader(im, 0, im.Size()))
	var le *LayerError
	if !errors.As(err, &le) {
		t.Fatalf("read of a corrupt layer: %v, want a LayerError", err)
	}
	if le.Layer != 1 || le.Name != bad || !errors.Is(err, zfile.ErrChecksum) {
		t.Fatalf("LayerError %+v (err %v), want layer 1, %s, a checksum error", le, err, bad)
	}
}
