package image

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/obd-project/obd/config"
)

const dext4 = "../testdata/golden/reference/d_ext4"

// TestOpenReferenceTurboOCI: the reference's TurboOCI layers (testdata/golden/
// reference/README.md, d_ext4) read back as the reference's image service reads
// them: the ext4 meta over the gzip layer through its index, or over the plain tar,
// and the erofs meta.
func TestOpenReferenceTurboOCI(t *testing.T) {
	for _, c := range []struct{ config, sha string }{
		{"t0.json", "14f0ac5df4176e0dfe34f1bb9681c470f4cb30fa2659b270b3dcb71d40908f38"},
		{"t0-tar.json", "14f0ac5df4176e0dfe34f1bb9681c470f4cb30fa2659b270b3dcb71d40908f38"},
		{"e0.json", "2afe473fdf30fbd0ed2e664c1ceb5596157cd60bec7e549bf0a313f24b217abb"},
	} {
		t.Run(c.config, func(t *testing.T) {
			js, err := os.ReadFile(dext4 + "/" + c.config)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.ParseImageConfig(js, abs(t, dext4))
			if err != nil {
				t.Fatal(err)
			}
			im, err := Open(context.Background(), cfg, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if got := diskSHA(t, im); got != c.sha {
				t.Errorf("vdisk sha256 %s, want %s", got, c.sha)
			}
		})
	}
}

// TestTurboOCIErrors: a TurboOCI lower whose gzip index is not the target's, or whose
// target is remote without registry access, fails to open with an error naming what is wrong.
func TestTurboOCIErrors(t *testing.T) {
	for js, want := range map[string]string{
		`{"lowers":[{"file":"t0.fsmeta","targetFile":"layer0.tar","gzipIndex":"t0.gzip.meta"}]}`:                                                  "made for a gzip file",
		`{"lowers":[{"file":"t0.fsmeta","targetDigest":"sha256:` + strings.Repeat("a", 64) + `"}],"repoBlobUrl":"http://127.0.0.1:1/v2/x/blobs"}`: "no registry access",
	} {
		cfg, err := config.ParseImageConfig([]byte(js), abs(t, dext4))
		if err != nil {
			t.Fatal(err)
		}
		im, err := Open(context.Background(), cfg, Options{})
		if err == nil {
			im.Close()
		}
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "layer 0") {
			t.Errorf("%s: %v, want an error about layer 0 with %q", js, err, want)
		}
	}
}
