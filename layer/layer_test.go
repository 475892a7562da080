package layer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/obd-project/obd/lsmt"
)

const golden = "../testdata/golden"

// helloBlob is the single layer of the converted hello-world image: tar(pax) -> zfile -> LSMT.
var helloBlob = filepath.Join(golden, "hello-world-oci/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d")

func sha(r io.Reader) string {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		panic(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ext4Base returns the baselayer blob ext4_64 (a legacy ZFile of a sealed LSMT layer).
func ext4Base(t testing.TB) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join(golden, "ext4_64.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("ext4_64 not found in ext4_64.tar.gz: %v", err)
		}
		if filepath.Base(h.Name) == "ext4_64" {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

func TestUnwrapGolden(t *testing.T) {
	hello, err := os.ReadFile(helloBlob)
	if err != nil {
		t.Fatal(err)
	}
	base := ext4Base(t)
	if got := sha(bytes.NewReader(base)); got != "c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9" {
		t.Fatalf("ext4_64 sha256 %s", got)
	}
	b0, err := os.ReadFile(filepath.Join(golden, "reference/b_stack/b0.commit"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		blob      []byte
		chain     string
		innerSize int64
		innerSHA  string
		uuid      string
	}{
		{"hello-world", hello, "[tar zfile]", 71528448, "39195424aa10572fe002262190877b4306a66be9c62c8f1594141b01dc79c2ea", "01BB4FCE-3EB1-B56B-05AD-F99504DAFD31"},
		{"ext4_64", base, "[zfile]", 541937664, "799dbd74cbcfbd7f37611057130b20fda0e1e671280df97cc3a05d73620d5ac7", "C02FB491-B4D4-4904-8684-A014D032AF78"},
		{"b0.commit", b0, "[]", 2371584, "009e426bd0a07ee39862cb9a287af84c919c473d3d70554c8ab4b948fceb5f3f", "B0000000-0000-4000-8000-000000000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner, size, w, err := Unwrap(bytes.NewReader(tc.blob), int64(len(tc.blob)), tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if got := fmtChain(w.Chain()); got != tc.chain {
				t.Errorf("chain %s, want %s", got, tc.chain)
			}
			if size != tc.innerSize {
				t.Fatalf("inner size %d, want %d", size, tc.innerSize)
			}
			if got := sha(io.NewSectionReader(inner, 0, size)); got != tc.innerSHA {
				t.Errorf("inner sha256 %s, want %s", got, tc.innerSHA)
			}
			l, _, err := Open(bytes.NewReader(tc.blob), int64(len(tc.blob)), tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if got := l.UUID().String(); got != tc.uuid {
				t.Errorf("uuid %s, want %s", got, tc.uuid)
			}
		})
	}
	if w, err := OpenFile(helloBlob); err != nil || !w.Wrapping.Tar || w.Wrapping.TarPayloadOffset != 1536 {
		t.Fatalf("OpenFile(hello): %v, wrapping %+v", err, w)
	} else {
		w.Close()
	}
}

func fmtChain(c []string) string {
	var b bytes.Buffer
	b.WriteString("[")
	for i, s := range c {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(s)
	}
	b.WriteString("]")
	return b.String()
}

// TestHelloWorldDisk reads the converted hello-world image as the snapshotter stacks it
// (baselayer, then the hello-world layer) and checks the documented values.
func TestHelloWorldDisk(t *testing.T) {
	base := ext4Base(t)
	hello, err := os.ReadFile(helloBlob)
	if err != nil {
		t.Fatal(err)
	}
	lb, _, err := Open(bytes.NewReader(base), int64(len(base)), "ext4_64")
	if err != nil {
		t.Fatal(err)
	}
	lh, _, err := Open(bytes.NewReader(hello), int64(len(hello)), "hello")
	if err != nil {
		t.Fatal(err)
	}
	only, err := lsmt.NewImage([]*lsmt.Layer{lh}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := sha(io.NewSectionReader(only, 0, 64<<20)); got != "3d8fbd5eecce5775369f56d6474998f824b893045b46ff3f47dc3839d9d56fa9" {
		t.Errorf("first 64 MiB of the hello-world layer: sha256 %s", got)
	}
	im, err := lsmt.NewImage([]*lsmt.Layer{lb, lh}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if im.Size() != 64<<30 {
		t.Fatalf("size %d, want 64 GiB", im.Size())
	}
	sb := make([]byte, 2)
	if _, err := im.ReadAt(sb, 1024+0x38); err != nil || sb[0] != 0x53 || sb[1] != 0xEF {
		t.Fatalf("ext4 magic at 1024+0x38: % x, %v", sb, err)
	}
	// /hello's 13,256 bytes sit at virtual sector 12,416.
	h := make([]byte, 13256)
	if _, err := im.ReadAt(h, 12416*512); err != nil {
		t.Fatal(err)
	}
	if got := sha(bytes.NewReader(h)); got != "d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014" {
		t.Errorf("/hello at sector 12416: sha256 %s", got)
	}
}

func TestOpenRejects(t *testing.T) {
	for name, blob := range map[string][]byte{
		"empty":   {},
		"garbage": bytes.Repeat([]byte{0xAB}, 10000),
		"zeros":   make([]byte, 8192),
	} {
		if _, _, err := Open(bytes.NewReader(blob), int64(len(blob)), name); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
	hello, err := os.ReadFile(helloBlob)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Open(bytes.NewReader(hello[:300000]), 300000, "truncated"); err == nil {
		t.Error("truncated hello-world blob opened")
	}
}
