package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// obd inspect exits non-zero for a file that is not a layer and for a damaged
// wrapper, and zero for layers and ZFiles.
func TestInspectExitCodes(t *testing.T) {
	dir := t.TempDir()
	tarLayer, err := os.ReadFile("../../testdata/golden/reference/d_ext4/d0.commit-z-t.tar")
	if err != nil {
		t.Fatal(err)
	}
	damaged := append([]byte(nil), tarLayer...)
	damaged[0] ^= 0x40 // the member name: the header checksum fails
	notLayer := []byte(strings.Repeat("not a layer at all\n", 100))
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		file, want string // want: "" = success, else part of the error
	}{
		{bstack + "/b0.commit", ""},
		{"../../testdata/golden/reference/d_ext4/d0.commit-z-t.tar", ""},
		{"../../testdata/golden/reference/c_zfile/raw4m.lz4.zfile", ""},
		{write("damaged.tar", damaged), "damaged tar"},
		{write("text", notLayer), "not an OverlayBD layer"},
	} {
		out, err := obd(t, "inspect", tc.file)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("inspect %s: %v\n%s", tc.file, err, out)
		case tc.want != "" && err == nil:
			t.Errorf("inspect %s: exit 0, want an error with %q\n%s", tc.file, tc.want, out)
		case tc.want != "" && !strings.Contains(out, tc.want):
			t.Errorf("inspect %s: output lacks %q:\n%s", tc.file, tc.want, out)
		}
	}
}
