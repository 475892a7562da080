package layer

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
)

// FuzzOpen feeds arbitrary blobs through the whole unwrapping chain (tar -> ZFile ->
// LSMT) and reads the result: errors are fine, panics and hangs are not.
func FuzzOpen(f *testing.F) {
	small, err := os.ReadFile(filepath.Join(golden, "reference/b_stack/b2.commit"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(small)
	var z bytes.Buffer
	if _, err := zfile.Compress(&z, bytes.NewReader(small), zfile.Options{BlockSize: 4096, Workers: 1}); err != nil {
		f.Fatal(err)
	}
	f.Add(z.Bytes())
	var tz bytes.Buffer
	tw, err := tarwrap.NewWriter(&tz, int64(z.Len()))
	if err != nil {
		f.Fatal(err)
	}
	tw.Write(z.Bytes())
	tw.Close()
	f.Add(tz.Bytes())
	f.Fuzz(func(t *testing.T, blob []byte) {
		l, _, err := Open(bytes.NewReader(blob), int64(len(blob)), "fuzz")
		if err != nil {
			return
		}
		im, err := lsmt.NewImage([]*lsmt.Layer{l}, nil)
		if err != nil {
			return
		}
		buf := make([]byte, 64<<10)
		for _, s := range l.Segments() {
			off := int64(s.Offset) * lsmt.SectorSize
			if off < im.Size() {
				im.ReadAt(buf, off)
			}
		}
	})
}
