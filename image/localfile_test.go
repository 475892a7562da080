package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A labelled plain file exposes the file for direct reads (lsmt.LocalFiler);
// anything else labelled (a ZFile or remote reader, a trace wrapper) does not.
func TestLabelledReaderLocalFile(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "layer"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := (&labelledReader{r: f}).LocalFile(); got != f {
		t.Fatalf("LocalFile() = %v, want the file", got)
	}
	if got := (&labelledReader{r: strings.NewReader("x")}).LocalFile(); got != nil {
		t.Fatalf("LocalFile() = %v over a non-file reader", got)
	}
}

// An image of local plain layers maps every range to its files, so ublk reads
// them on its own ring (the conformance suite checks the mapped bytes).
func TestLocalImageMapsToFiles(t *testing.T) {
	im, err := Open(context.Background(), parse(t, `{"lowers":[{"file":"b0.commit"},{"file":"b1.commit"},{"file":"b2.commit"}]}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	ext, ok := im.MapFile(nil, 0, im.Size())
	if !ok {
		t.Fatal("a local image does not map to its files")
	}
	files := 0
	for _, e := range ext {
		if e.Fd >= 0 {
			files++
		}
	}
	if files == 0 {
		t.Fatalf("MapFile gave %d extents, none in a file", len(ext))
	}
}
