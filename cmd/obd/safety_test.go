package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obd-project/obd/lsmt"
)

// safetyFixture is a directory with one of each kind of input the writing commands take.
type safetyFixture struct {
	dir                               string
	data, index, sealed, raw, zf, cfg string
}

func newSafetyFixture(t *testing.T) safetyFixture {
	t.Helper()
	dir := t.TempDir()
	f := safetyFixture{dir: dir, data: filepath.Join(dir, "data"), index: filepath.Join(dir, "index"),
		sealed: filepath.Join(dir, "b2.commit"), raw: filepath.Join(dir, "disk.raw"), zf: filepath.Join(dir, "z"), cfg: filepath.Join(dir, "config.v1.json")}
	copyFile(t, filepath.Join(bstack, "b2.rw.data"), f.data)
	copyFile(t, filepath.Join(bstack, "b2.rw.index"), f.index)
	copyFile(t, filepath.Join(bstack, "b2.commit"), f.sealed)
	if err := os.WriteFile(f.raw, bytes.Repeat([]byte("raw!"), 1<<14), 0o644); err != nil {
		t.Fatal(err)
	}
	mustObd(t, "zfile", f.raw, f.zf)
	if err := os.WriteFile(f.cfg, []byte(`{"lowers":[{"file":"`+f.sealed+`"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// writers lists every writing command with its output replaced by out.
func (f safetyFixture) writers(out string) [][]string {
	return [][]string{
		{"commit", f.data, f.index, out},
		{"commit", "--sealed", f.sealed, out},
		{"import", f.raw, out},
		{"merge", f.sealed, out},
		{"zfile", f.raw, out},
		{"zfile", "-x", f.zf, out},
		{"export", "-o", out, f.sealed},
		{"export", "--upper-data", f.data, "--upper-index", f.index, "-o", out, f.sealed},
		{"overlaybd-commit", f.data, f.index, out},
		{"overlaybd-commit", "--commit_sealed", f.sealed, out},
		{"overlaybd-zfile", f.raw, out},
		{"overlaybd-zfile", "-x", f.zf, out},
		{"overlaybd-merge", f.cfg, out},
	}
}

func (f safetyFixture) inputs() []string {
	return []string{f.data, f.index, f.sealed, f.raw, f.zf, f.cfg}
}

func TestOutputIsNeverAnInput(t *testing.T) {
	f := newSafetyFixture(t)
	sums := map[string]string{}
	for _, in := range f.inputs() {
		sums[in] = fileSHA(t, in)
	}
	const out = "\x00OUT"
	for _, args := range f.writers(out) {
		for _, in := range args {
			if _, isInput := sums[in]; !isInput {
				continue
			}
			// The input itself, a symlink to it and a hard link to it.
			sym, hard := filepath.Join(f.dir, "sym"), filepath.Join(f.dir, "hard")
			os.Remove(sym)
			os.Remove(hard)
			if err := os.Symlink(in, sym); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(in, hard); err != nil {
				t.Fatal(err)
			}
			for _, alias := range []string{in, sym, hard} {
				for _, force := range []bool{false, true} {
					full := []string{args[0]}
					if force {
						full = append(full, "-f")
					}
					for _, a := range args[1:] {
						if a == out {
							a = alias
						}
						full = append(full, a)
					}
					msg, err := obd(t, full...)
					if err == nil || !strings.Contains(msg, "is the input") {
						t.Errorf("obd %v: err %v, output %q; want a refusal naming the input", full, err, msg)
					}
				}
			}
		}
	}
	for in, sum := range sums {
		if got := fileSHA(t, in); got != sum {
			t.Errorf("%s changed", filepath.Base(in))
		}
	}
	assertNoTemp(t, f.dir)
}

func TestExistingOutputNeedsForce(t *testing.T) {
	f := newSafetyFixture(t)
	out := filepath.Join(f.dir, "out")
	for _, args := range f.writers(out) {
		if err := os.WriteFile(out, []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
		msg, err := obd(t, args...)
		if err == nil || !strings.Contains(msg, "exists") {
			t.Errorf("obd %v over an existing file: err %v, output %q", args, err, msg)
		}
		if b, _ := os.ReadFile(out); string(b) != "precious" {
			t.Errorf("obd %v replaced an existing file without -f", args)
		}
		full := append([]string{args[0], "-f"}, args[1:]...)
		mustObd(t, full...)
		if b, _ := os.ReadFile(out); string(b) == "precious" {
			t.Errorf("obd %v did not replace the file", full)
		}
	}
	// create: DATA and INDEX are never replaced without -f.
	for _, args := range [][]string{{"create", f.data, filepath.Join(f.dir, "new.index"), "1G"}, {"overlaybd-create", filepath.Join(f.dir, "new.data"), f.index, "1"}} {
		sum := fileSHA(t, f.data)
		if msg, err := obd(t, args...); err == nil || !strings.Contains(msg, "exists") {
			t.Errorf("obd %v over an existing layer: err %v, output %q", args, err, msg)
		}
		if fileSHA(t, f.data) != sum {
			t.Errorf("obd %v changed the existing layer", args)
		}
		for _, p := range []string{"new.data", "new.index"} {
			if _, err := os.Stat(filepath.Join(f.dir, p)); err == nil {
				t.Errorf("obd %v left %s behind", args, p)
			}
		}
	}
	assertNoTemp(t, f.dir)
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

// An interrupted command removes its temporary output: obd compresses a stream that
// the test keeps open, and gets SIGINT (or SIGTERM) once its temporary file exists.
func TestInterruptLeavesNoTempFile(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.zfile")
		cmd := exec.Command(obdBin, "-q", "zfile", "-", out)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := stdin.Write(bytes.Repeat([]byte("x"), 1<<20)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for !hasTemp(dir) {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("no temporary file within a minute: %s", stderr.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		cmd.Process.Signal(sig)
		err = cmd.Wait()
		stdin.Close()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 128+int(sig) {
			t.Fatalf("%v: exit %v, want %d; stderr %s", sig, err, 128+int(sig), stderr.String())
		}
		if hasTemp(dir) {
			t.Fatalf("%v: temporary file left behind", sig)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("%v: a half-written output appeared", sig)
		}
	}
}

func hasTemp(dir string) bool {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			return true
		}
	}
	return false
}

// A writable layer opened by another user (here: this test process, as a device
// would hold it) is refused by seal, commit and export, naming the holder.
func TestLockedLayerIsRefused(t *testing.T) {
	f := newSafetyFixture(t)
	df, _ := os.OpenFile(f.data, os.O_RDWR, 0)
	xf, _ := os.OpenFile(f.index, os.O_RDWR, 0)
	w, err := lsmt.OpenWritable(df, xf)
	if err != nil {
		t.Fatal(err)
	}
	w.SetHolderNote("device 42")
	sum := fileSHA(t, f.data)
	out := filepath.Join(f.dir, "out")
	for _, args := range [][]string{
		{"seal", f.data, f.index},
		{"commit", f.data, f.index, out},
		{"export", "--upper-data", f.data, "--upper-index", f.index, "-o", out, f.sealed},
		{"merge", "--compress", "lz4", f.sealed, out}, // not locked: works
		{"overlaybd-commit", "--seal", f.data, f.index},
		{"create", "-f", f.data, f.index, "1G"},
	} {
		msg, err := obd(t, args...)
		if args[0] == "merge" {
			if err != nil {
				t.Fatalf("merge of sealed layers: %v %s", err, msg)
			}
			os.Remove(out)
			continue
		}
		if err == nil || !strings.Contains(msg, "in use by pid "+strconv.Itoa(os.Getpid())) {
			t.Errorf("obd %v of a locked layer: err %v, output %q; want the holder's pid", args, err, msg)
		}
		if bytes.Contains([]byte(msg), []byte("device")) != strings.Contains(msg, "device 42") {
			t.Errorf("holder note garbled: %s", msg)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a refused command wrote its output")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if fileSHA(t, f.data) != sum {
		t.Error("the locked layer changed")
	}
	mustObd(t, "commit", f.data, f.index, out)
	mustObd(t, "seal", f.data, f.index)
}

func TestSealedOrMismatchedLayersAreRefused(t *testing.T) {
	f := newSafetyFixture(t)
	a := filepath.Join(f.dir, "a")
	mustObd(t, "create", a+".data", a+".index", "64M")
	// Index of another layer.
	msg, err := obd(t, "commit", f.data, a+".index", filepath.Join(f.dir, "x"))
	if err == nil || !strings.Contains(msg, "data") || !strings.Contains(msg, "a.index") || !strings.Contains(msg, "different layers") {
		t.Errorf("commit with another layer's index: err %v, %q", err, msg)
	}
	// A committed layer given as the writable one.
	for _, args := range [][]string{{"seal", f.sealed, f.index}, {"commit", f.sealed, f.index, filepath.Join(f.dir, "x")}} {
		if msg, err := obd(t, args...); err == nil || !strings.Contains(msg, "sealed (committed) layer") {
			t.Errorf("obd %v: err %v, %q", args, err, msg)
		}
	}
	// Sealed in place, then sealed or committed again.
	mustObd(t, "seal", f.data, f.index)
	sum := fileSHA(t, f.data)
	for _, args := range [][]string{{"seal", f.data, f.index}, {"commit", f.data, f.index, filepath.Join(f.dir, "x")}, {"overlaybd-commit", "--seal", f.data, f.index}} {
		if msg, err := obd(t, args...); err == nil || !strings.Contains(msg, "sealed in place") {
			t.Errorf("obd %v of a sealed layer: err %v, %q", args, err, msg)
		}
	}
	if fileSHA(t, f.data) != sum {
		t.Error("the sealed layer changed")
	}
	// As the read-only layer it now is, it exports the disk of b0+b1+b2.
	raw := filepath.Join(f.dir, "disk")
	mustObd(t, "export", "-o", raw, filepath.Join(bstack, "b0.commit"), filepath.Join(bstack, "b1.commit"), f.data)
	if got := fileSHA(t, raw); got != vdiskL012 {
		t.Errorf("export with the sealed-in-place layer: %s", got)
	}
}

func TestSmallCLIFixes(t *testing.T) {
	dir := t.TempDir()
	// Global flags after the command.
	src := filepath.Join(dir, "src")
	os.WriteFile(src, bytes.Repeat([]byte("q"), 100000), 0o644)
	cmd := exec.Command(obdBin, "zfile", "-q", "--log-level", "warn", src, filepath.Join(dir, "z"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("obd zfile -q --log-level warn: %v %s", err, out)
	}
	if out, err := exec.Command(obdBin, "create", "--log-level", "nonsense", "a", "b", "1M").CombinedOutput(); err == nil || !strings.Contains(string(out), "nonsense") {
		t.Fatalf("a bad --log-level after the command: %v %s", err, out)
	}
	// create of size 0.
	if msg, err := obd(t, "create", filepath.Join(dir, "d"), filepath.Join(dir, "i"), "0"); err == nil || !strings.Contains(msg, "SIZE 0") {
		t.Fatalf("create of size 0: %v %s", err, msg)
	}
	// A bare number is bytes for obd create (GiB for overlaybd-create): "64" is refused.
	if msg, err := obd(t, "create", filepath.Join(dir, "d"), filepath.Join(dir, "i"), "64"); err == nil || !strings.Contains(msg, "64GiB?") {
		t.Fatalf("create of 64 bytes: %v %s", err, msg)
	}
	// import of a raw file that is not a multiple of 512 bytes: padded, with a warning.
	raw := filepath.Join(dir, "odd.raw")
	want := bytes.Repeat([]byte("odd"), 1000) // 3000 bytes
	os.WriteFile(raw, want, 0o644)
	cmd = exec.Command(obdBin, "import", raw, filepath.Join(dir, "odd.layer"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "not a multiple of 512") {
		t.Fatalf("import of a 3000-byte raw file: %v %s", err, out)
	}
	mustObd(t, "export", "-o", filepath.Join(dir, "back"), filepath.Join(dir, "odd.layer"))
	got, _ := os.ReadFile(filepath.Join(dir, "back"))
	if len(got) != 3072 || !bytes.Equal(got[:3000], want) || !bytes.Equal(got[3000:], make([]byte, 72)) {
		t.Fatalf("exported disk of the padded import: %d bytes", len(got))
	}
}
