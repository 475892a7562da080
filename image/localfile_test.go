package image

import (
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
