package layer

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/obd-project/obd/tarwrap"
	"github.com/obd-project/obd/zfile"
)

// A ZFile block failing its CRC inside a tar wrapper over a local reader (no
// cache: tarwrap.Payload.Evict says blobio.ErrNotEvictable) fails after one read,
// as over a reader without Evict: no eviction, no re-read.
func TestBadBlockInTarOverLocalReader(t *testing.T) {
	plain := make([]byte, 64<<10)
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range plain {
		plain[i] = byte(rnd.IntN(4))
	}
	var zb bytes.Buffer
	zw, err := zfile.NewWriter(&zb, zfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(plain)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	blob := append(tarwrap.Header(int64(zb.Len())), zb.Bytes()...)
	blob = append(blob, make([]byte, 2048)...)
	blob[tarwrap.HeaderSize+512+10] ^= 0xff // in the first block's data
	r, _, w, err := Unwrap(bytes.NewReader(blob), int64(len(blob)), "local")
	if err != nil || !w.Tar || w.ZFile == nil {
		t.Fatalf("unwrap: %+v, %v", w, err)
	}
	_, err = r.ReadAt(make([]byte, 4096), 0)
	var be *zfile.BlockError
	if !errors.As(err, &be) || be.Tries != 1 || !errors.Is(err, zfile.ErrChecksum) || strings.Contains(err.Error(), "evict") {
		t.Fatalf("read of a bad block: %v; want a BlockError after 1 try, without an eviction", err)
	}
}
