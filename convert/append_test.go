package convert

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func blobFile(t *testing.T, content string) Layer {
	t.Helper()
	p := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(content))
	return Layer{Path: p, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(content))}
}

// TestAppendImage: layers stacked on an overlaybd image keep the base's layers,
// config and media types and get the overlaybd annotations; a base with an
// ordinary layer is refused, naming it.
func TestAppendImage(t *testing.T) {
	l1, l2 := blobFile(t, "lower layer"), blobFile(t, "committed container layer")
	cfg := &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: v1.Config{Env: []string{"PATH=/bin"}, Cmd: []string{"sh"}}}
	for _, oci := range []bool{false, true} {
		base, err := BuildImage([]Layer{l1}, cfg, oci)
		if err != nil {
			t.Fatal(err)
		}
		img, err := AppendImage(base, []Layer{l2})
		if err != nil {
			t.Fatal(err)
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		wantMT := types.DockerUncompressedLayer
		if oci {
			wantMT = types.OCIUncompressedLayer
		}
		if len(m.Layers) != 2 || m.Layers[0].Digest.String() != l1.Digest || m.Layers[1].Digest.String() != l2.Digest {
			t.Fatalf("oci=%v: layers %+v, want %s then %s", oci, m.Layers, l1.Digest, l2.Digest)
		}
		top := m.Layers[1]
		if top.MediaType != wantMT || top.Annotations[AnnotationBlobDigest] != l2.Digest || top.Annotations[AnnotationBlobSize] != "25" {
			t.Errorf("oci=%v: top layer %+v, want media type %s and the overlaybd annotations", oci, top, wantMT)
		}
		got, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if len(got.RootFS.DiffIDs) != 2 || got.RootFS.DiffIDs[1].String() != l2.Digest || strings.Join(got.Config.Cmd, " ") != "sh" {
			t.Errorf("oci=%v: config %+v, want the base's with diff_ids %s, %s", oci, got, l1.Digest, l2.Digest)
		}
	}

	plain, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := AppendImage(plain, []Layer{l2}); err == nil || !strings.Contains(err.Error(), "layer 0") {
		t.Errorf("AppendImage on an ordinary image: %v, want an error naming layer 0", err)
	}
}
