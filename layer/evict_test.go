package layer

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
)

// A ZFile block failing its CRC inside a tar wrapper over a local reader (no
// cache: tarwrap.Payload.Evict says blobio.ErrNotEvictable) fails after one read,
// as over a reader without Evict: no eviction, no re-read.
func TestBadBlockInTarOverLocalReader(t *testing.T) {
	blob, err := os.ReadFile(helloBlob) // tar -> ZFile (block CRCs) -> LSMT
	if err != nil {
		t.Fatal(err)
	}
	blob[tarwrap.HeaderSize+512+10] ^= 0xff // in the first block's data
	r, _, w, err := Unwrap(bytes.NewReader(blob), int64(len(blob)), "local")
	if err != nil || !w.Tar || w.ZFile == nil {
		t.Fatalf("unwrap: %+v, %v", w, err)
	}
	_, err = r.ReadAt(make([]byte, 512), 0)
	var be *zfile.BlockError
	if !errors.As(err, &be) || be.Tries != 1 || !errors.Is(err, zfile.ErrChecksum) || strings.Contains(err.Error(), "evict") {
		t.Fatalf("read of a bad block: %v; want a BlockError after 1 try, without an eviction", err)
	}
}
