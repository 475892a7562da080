package layer

import (
	"archive/tar"
	"bytes"
	"testing"
)

func TestIsDamagedTar(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "overlaybd.commit", Mode: 0o644, Size: 0, Format: tar.FormatUSTAR})
	tw.Close()
	good := buf.Bytes()[:512]
	if IsDamagedTar(good) {
		t.Error("a valid ustar header reported damaged")
	}
	bad := bytes.Clone(good)
	bad[0] ^= 0x40 // name byte: checksum no longer matches
	if !IsDamagedTar(bad) {
		t.Error("a ustar header failing its checksum not reported damaged")
	}
	if IsDamagedTar(make([]byte, 512)) || IsDamagedTar(bad[:100]) {
		t.Error("zeros or a short head reported as damaged tar")
	}
}
