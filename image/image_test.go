package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/lsmt"
)

const bstack = "../testdata/golden/reference/b_stack"

func abs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func copyFile(t *testing.T, src, dst string) {
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func diskSHA(t *testing.T, im *Image) string {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(im, 0, im.Size())); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func parse(t *testing.T, js string) *config.ImageConfig {
	c, err := config.ParseImageConfig([]byte(js), abs(t, bstack))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestOpenReferenceStack(t *testing.T) {
	im, err := Open(context.Background(), parse(t, `{"lowers":[{"file":"b0.commit"},{"file":"b1.commit"},{"file":"b2.commit"}]}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if !blockdev.IsReadOnly(im) {
		t.Error("image without upper is not read-only")
	}
	if _, err := im.WriteAt(make([]byte, 512), 0); err == nil {
		t.Error("write to a read-only image succeeded")
	}
	if got := diskSHA(t, im); got != "519373c4a04fac76b9462987bd06c57a56f672e8582fb018609be74ec3ffa454" {
		t.Fatalf("vdisk sha256 %s", got)
	}
}

func TestOpenWithUpperWritesAndFlushes(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, filepath.Join(bstack, "b2.rw.data"), filepath.Join(dir, "data"))
	copyFile(t, filepath.Join(bstack, "b2.rw.index"), filepath.Join(dir, "index"))
	js := `{"lowers":[{"file":"` + abs(t, bstack) + `/b0.commit"},{"dir":"layer1"}],
	        "upper":{"data":"data","index":"index"},"resultFile":"result"}`
	os.MkdirAll(filepath.Join(dir, "layer1"), 0o755)
	copyFile(t, filepath.Join(bstack, "b1.commit"), filepath.Join(dir, "layer1", "overlaybd.commit"))
	cfg, err := config.ParseImageConfig([]byte(js), dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := Open(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if blockdev.IsReadOnly(im) {
		t.Fatal("image with an upper is read-only")
	}
	if got := diskSHA(t, im); got != "519373c4a04fac76b9462987bd06c57a56f672e8582fb018609be74ec3ffa454" {
		t.Fatalf("vdisk sha256 %s", got)
	}
	msg := []byte(strings.Repeat("written by the image test. ", 40))[:1024]
	if _, err := im.WriteAt(msg, 4096); err != nil {
		t.Fatal(err)
	}
	if err := im.Discard(8<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	im.Close()
	// Reopen: the write and the discard are there.
	im, err = Open(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	got := make([]byte, 1024)
	if _, err := im.ReadAt(got, 4096); err != nil || string(got) != string(msg) {
		t.Fatalf("after reopen: %q, %v", got[:32], err)
	}
	z := make([]byte, 1<<20)
	if _, err := im.ReadAt(z, 8<<20); err != nil {
		t.Fatal(err)
	}
	for i, b := range z {
		if b != 0 {
			t.Fatalf("discarded range has byte %#x at +%d", b, i)
		}
	}
}

func TestOpenErrorsNameTheLayer(t *testing.T) {
	dir := t.TempDir()
	b, _ := os.ReadFile(filepath.Join(bstack, "b1.commit"))
	os.WriteFile(filepath.Join(dir, "corrupt.commit"), b[:len(b)/2], 0o644)
	for js, want := range map[string]string{
		`{"lowers":[{"file":"b0.commit"},{"file":"missing.commit"}]}`:                        "failed to open layer 1",
		`{"lowers":[{"file":"b0.commit"},{"file":"` + dir + `/corrupt.commit"}]}`:            "failed to open layer 1",
		`{"lowers":[{"digest":"sha256:` + strings.Repeat("a", 64) + `"}]}`:                   "failed to open layer 0",
		`{"lowers":[{"file":"b0.commit"}],"upper":{"data":"/nonexistent/d","index":"/x/i"}}`: "upper data",
		`{"lowers":[]}`: "no virtual size",
	} {
		_, err := Open(context.Background(), parse(t, js), Options{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to contain %q", js, err, want)
		}
	}
}

// A sparse upper over the reference stack, reopened the way a daemon restart or a ublk
// recovery reopens it (image.Open again): a 512-byte write and a WRITE_ZEROES over lower
// data read the same as before (the first MiB compared byte by byte).
func TestOpenSparseUpperSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	data, err := os.Create(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := lsmt.Create(data, nil, lsmt.CreateOptions{Sparse: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	js := `{"lowers":[{"file":"` + abs(t, bstack) + `/b0.commit"},{"file":"` + abs(t, bstack) + `/b1.commit"},{"file":"` + abs(t, bstack) + `/b2.commit"}],
	        "upper":{"data":"data","index":"index"},"resultFile":"result"}`
	cfg, err := config.ParseImageConfig([]byte(js), dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := Open(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const span = 1 << 20 // the edits and the blocks around them
	model := make([]byte, span)
	_, err = im.ReadAt(model, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The lower data the edits land on must not be zeros, or the test proves nothing.
	if bytes.Count(model[:64<<10], []byte{0}) == 64<<10 {
		t.Fatal("the reference stack has no data in its first 64 KiB")
	}
	msg := bytes.Repeat([]byte{0x5A}, 512)
	if _, err := im.WriteAt(msg, 1024); err != nil {
		t.Fatal(err)
	}
	copy(model[1024:], msg)
	if err := im.WriteZeroes(12<<10, 20<<10); err != nil {
		t.Fatal(err)
	}
	clear(model[12<<10 : 32<<10])
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	im.Close()
	im, err = Open(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	got := make([]byte, span)
	if _, err := im.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		for j := range got {
			if got[j] != model[j] {
				t.Fatalf("after reopen the disk differs at byte %d: %#x, want %#x", j, got[j], model[j])
			}
		}
	}
}
