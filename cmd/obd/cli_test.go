package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obd-project/obd/lsmt"
)

// The CLI tests run the real binary, built once.
var obdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "obd-cli-test")
	if err != nil {
		panic(err)
	}
	obdBin = filepath.Join(dir, "obd")
	if out, err := exec.Command("go", "build", "-o", obdBin, ".").CombinedOutput(); err != nil {
		panic("go build: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const bstack = "../../testdata/golden/reference/b_stack"

// Expected sha256 of the 1 GiB virtual disks of the b_stack set (reference README).
const (
	vdiskL0   = "7cf80e3811e132e8db9413ce0d6eadcef6d9ba1892f2d7802570bbdda0e1d59a"
	vdiskL012 = "519373c4a04fac76b9462987bd06c57a56f672e8582fb018609be74ec3ffa454"
)

func obd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(obdBin, append([]string{"-q"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

func mustObd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := obd(t, args...)
	if err != nil {
		t.Fatalf("obd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCommitIsByteIdentical(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, filepath.Join(bstack, "b2.rw.data"), filepath.Join(dir, "d"))
	copyFile(t, filepath.Join(bstack, "b2.rw.index"), filepath.Join(dir, "i"))
	out := filepath.Join(dir, "b2.commit")
	mustObd(t, "commit", "--uuid", "b2222222-2222-4222-8222-222222222222", "--parent-uuid", "b1111111-1111-4111-8111-111111111111",
		filepath.Join(dir, "d"), filepath.Join(dir, "i"), out)
	if got, want := fileSHA(t, out), fileSHA(t, filepath.Join(bstack, "b2.commit")); got != want {
		t.Fatalf("obd commit output sha256 %s, reference b2.commit %s", got, want)
	}
}

func TestExportStack(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	b := func(n string) string { return filepath.Join(bstack, n) }
	mustObd(t, "export", "-o", raw, b("b0.commit"), b("b1.commit"), b("b2.commit"))
	if got := fileSHA(t, raw); got != vdiskL012 {
		t.Fatalf("export b0 b1 b2: sha256 %s, want %s", got, vdiskL012)
	}
	// Same disk with layer 2 as a writable upper.
	copyFile(t, b("b2.rw.data"), filepath.Join(dir, "d"))
	copyFile(t, b("b2.rw.index"), filepath.Join(dir, "i"))
	raw2 := filepath.Join(dir, "disk2.raw")
	mustObd(t, "export", "--upper-data", filepath.Join(dir, "d"), "--upper-index", filepath.Join(dir, "i"), "-o", raw2, b("b0.commit"), b("b1.commit"))
	if got := fileSHA(t, raw2); got != vdiskL012 {
		t.Fatalf("export b0 b1 + rw b2: sha256 %s, want %s", got, vdiskL012)
	}
	// Import the raw disk back, compressed and tar-wrapped, and export it again via stdout.
	layer := filepath.Join(dir, "imported.tar")
	mustObd(t, "import", "--compress", "zstd", "--block-size", "16K", "--tar", "--uuid", "12345678-1234-1234-1234-123456789abc", raw, layer)
	var insp inspection
	if err := json.Unmarshal([]byte(mustObd(t, "inspect", "--json", layer)), &insp); err != nil {
		t.Fatal(err)
	}
	if strings.Join(insp.Chain, ",") != "tar,zfile,lsmt:sealed" || insp.ZFile.Algorithm != "zstd" || insp.ZFile.BlockSize != 16384 ||
		insp.LSMT.UUID != "12345678-1234-1234-1234-123456789ABC" || insp.LSMT.VirtualSize != 1<<30 || insp.ZFile.BlockChecksum != "ok" {
		t.Fatalf("inspect of the imported layer: %+v %+v %+v", insp.Chain, insp.ZFile, insp.LSMT)
	}
	cmd := exec.Command(obdBin, "-q", "export", "-o", "-", layer)
	h := sha256.New()
	cmd.Stdout = h
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != vdiskL012 {
		t.Fatalf("export -o - of the imported layer: sha256 %s, want %s", got, vdiskL012)
	}
	// Merge the three layers into one and check the merged disk.
	merged := filepath.Join(dir, "merged.lz4")
	mustObd(t, "merge", "--compress", "lz4", b("b0.commit"), b("b1.commit"), b("b2.commit"), merged)
	raw3 := filepath.Join(dir, "disk3.raw")
	mustObd(t, "export", "-o", raw3, merged)
	if got := fileSHA(t, raw3); got != vdiskL012 {
		t.Fatalf("export of the merged layer: sha256 %s, want %s", got, vdiskL012)
	}
}

func TestMergeMatchesReference(t *testing.T) {
	dir := t.TempDir()
	b := func(n string) string { return filepath.Join(bstack, n) }
	out := filepath.Join(dir, "merged.commit")
	mustObd(t, "merge", b("b0.commit"), b("b1.commit"), b("b2.commit"), out)
	if got, want := fileSHA(t, out), fileSHA(t, b("merged.commit")); got != want {
		t.Errorf("obd merge output sha256 %s, reference merged.commit %s", got, want)
	}
}

func TestCreateWriteSealCommit(t *testing.T) {
	for _, sparse := range []bool{false, true} {
		dir := t.TempDir()
		data, index := filepath.Join(dir, "data"), filepath.Join(dir, "index")
		args := []string{"create", "--parent-uuid", "b1111111-1111-4111-8111-111111111111"}
		if sparse {
			args = append(args, "--sparse")
		}
		mustObd(t, append(args, data, index, "64M")...)
		if _, err := obd(t, append(args, data, index, "64M")...); err == nil {
			t.Fatal("create over an existing layer succeeded")
		}
		// Write through the library, as a device would.
		df, _ := os.OpenFile(data, os.O_RDWR, 0)
		var xf *os.File
		if !sparse {
			xf, _ = os.OpenFile(index, os.O_RDWR, 0)
		}
		w, err := lsmt.OpenWritable(df, xf)
		if err != nil {
			t.Fatal(err)
		}
		payload := bytes.Repeat([]byte("obd!"), 2048) // 8 KiB
		if _, err := w.WriteAt(payload, 1<<20); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		commit := filepath.Join(dir, "c.zfile")
		mustObd(t, "commit", "-z", "lz4", "-m", "hello", data, index, commit)
		mustObd(t, "seal", data, index)
		for _, layer := range []string{commit, data} {
			raw := filepath.Join(dir, "raw")
			mustObd(t, "export", "-f", "-o", raw, layer)
			got, err := os.ReadFile(raw)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 64<<20)
			copy(want[1<<20:], payload)
			if !bytes.Equal(got, want) {
				t.Fatalf("sparse=%v: export of %s differs from what was written", sparse, filepath.Base(layer))
			}
		}
		var insp inspection
		if err := json.Unmarshal([]byte(mustObd(t, "inspect", "--json", commit)), &insp); err != nil {
			t.Fatal(err)
		}
		if insp.LSMT.UserTag != "hello" || insp.LSMT.ParentUUID != "B1111111-1111-4111-8111-111111111111" || insp.LSMT.UUID != "00000000-0000-0000-0000-000000000000" {
			t.Fatalf("inspect commit: %+v", insp.LSMT)
		}
	}
}

func TestZFileCommand(t *testing.T) {
	dir := t.TempDir()
	ref := "../../testdata/golden/reference/c_zfile/raw4m.lz4.zfile"
	raw := filepath.Join(dir, "raw")
	mustObd(t, "zfile", "--decompress", ref, raw)
	if got := fileSHA(t, raw); got != "2be3a09a29539a40f565c7247a940d01d05fbf7f9d84a753eefcdf3885ead257" {
		t.Fatalf("decompressed raw4m sha256 %s", got)
	}
	z := filepath.Join(dir, "z")
	mustObd(t, "zfile", "--algorithm", "zstd", "--block-size", "64K", raw, z)
	if out := mustObd(t, "zfile", "--verify", z); !strings.Contains(out, "ok") {
		t.Fatalf("verify: %s", out)
	}
	back := filepath.Join(dir, "back")
	mustObd(t, "zfile", "-x", z, back)
	if fileSHA(t, back) != fileSHA(t, raw) {
		t.Fatal("zstd round trip differs")
	}
	// A flipped bit in a block is found by --verify and by decompression.
	b, _ := os.ReadFile(z)
	b[4096] ^= 0x10
	os.WriteFile(z, b, 0o644)
	if out, err := obd(t, "zfile", "--verify", z); err == nil || !strings.Contains(out, "block") {
		t.Fatalf("verify of a corrupt zfile: err %v, output %s", err, out)
	}
	if _, err := obd(t, "zfile", "-x", z, filepath.Join(dir, "bad")); err == nil {
		t.Fatal("decompressing a corrupt zfile succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "bad")); !os.IsNotExist(err) {
		t.Fatal("a failed decompression left its output behind")
	}
}

func TestErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.layer")
	os.WriteFile(junk, bytes.Repeat([]byte{7}, 20000), 0o644)
	trunc := filepath.Join(dir, "trunc.commit")
	b, _ := os.ReadFile(filepath.Join(bstack, "b2.commit"))
	os.WriteFile(trunc, b[:len(b)-100], 0o644)
	for _, args := range [][]string{
		{"export", "-o", filepath.Join(dir, "x"), junk},
		{"export", "-o", filepath.Join(dir, "x"), trunc},
		{"export", "-o", filepath.Join(dir, "x"), filepath.Join(dir, "missing")},
		{"merge", trunc, filepath.Join(dir, "m")},
	} {
		out, err := obd(t, args...)
		if err == nil {
			t.Errorf("obd %v succeeded", args)
			continue
		}
		if !strings.Contains(out, filepath.Base(args[len(args)-1])) && !strings.Contains(out, filepath.Base(args[len(args)-2])) {
			t.Errorf("obd %v: error does not name the file: %s", args, out)
		}
	}
	for _, args := range [][]string{
		{"create", "a", "b", "12X"},
		{"commit", "--block-size", "3K", "a", "b", "c"},
		{"commit", "--uuid", "nope", "a", "b", "c"},
		{"commit", "-m", strings.Repeat("m", 300), "a", "b", "c"},
		{"zfile", "--algorithm", "lzo", "a", "b"},
	} {
		if out, err := obd(t, args...); err == nil {
			t.Errorf("obd %v succeeded: %s", args, out)
		}
	}
}
