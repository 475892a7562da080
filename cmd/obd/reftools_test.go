package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// refTool links obd under a reference tool's name, as `make build` does.
func refTool(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(filepath.Dir(obdBin), name)
	if _, err := os.Lstat(p); err != nil {
		if err := os.Symlink(obdBin, p); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func runTool(t *testing.T, tool string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(refTool(t, tool), args...).CombinedOutput()
	return string(out), err
}

func mustTool(t *testing.T, tool string, args ...string) string {
	t.Helper()
	out, err := runTool(t, tool, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return out
}

func inspectJSON(t *testing.T, path string) inspection {
	t.Helper()
	var in inspection
	if err := json.Unmarshal([]byte(mustObd(t, "inspect", "--json", path)), &in); err != nil {
		t.Fatal(err)
	}
	return in
}

func TestReferenceToolCommandLines(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }

	// overlaybd-create DATA INDEX VSIZE_GB with the flags after the arguments: a bare
	// size is GiB; -s still creates INDEX (empty), as the reference does.
	mustTool(t, "overlaybd-create", p("s.data"), p("s.index"), "2", "-s", "-u", "b1111111-1111-4111-8111-111111111111")
	if st, err := os.Stat(p("s.index")); err != nil || st.Size() != 0 {
		t.Fatalf("sparse create: index %v %v", st, err)
	}
	if in := inspectJSON(t, p("s.data")); in.LSMT.Kind != "writable-sparse" || in.LSMT.VirtualSize != 2<<30 || in.LSMT.ParentUUID != "B1111111-1111-4111-8111-111111111111" {
		t.Fatalf("overlaybd-create -s: %+v", in.LSMT)
	}
	if out, err := runTool(t, "overlaybd-create", p("s.data"), p("x.index"), "1"); err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("overlaybd-create over an existing data file: %v %s", err, out)
	}
	// The same through the obd subcommand.
	mustObd(t, "overlaybd-create", p("a.data"), p("a.index"), "1")
	if in := inspectJSON(t, p("a.data")); in.LSMT.Kind != "writable-data" || in.LSMT.VirtualSize != 1<<30 {
		t.Fatalf("obd overlaybd-create: %+v", in.LSMT)
	}

	// overlaybd-commit: -z -t combined, --algorithm, --bs in KiB, --uuid, -p, -m.
	mustTool(t, "overlaybd-commit", "-zt", "--algorithm", "zstd", "--bs", "16", "--uuid", "12345678-1234-1234-1234-123456789abc",
		"-p", "b1111111-1111-4111-8111-111111111111", "-m", "msg", p("s.data"), p("s.index"), p("s.tar"))
	in := inspectJSON(t, p("s.tar"))
	if strings.Join(in.Chain, ",") != "tar,zfile,lsmt:sealed" || in.ZFile.Algorithm != "zstd" || in.ZFile.BlockSize != 16384 ||
		in.LSMT.UUID != "12345678-1234-1234-1234-123456789ABC" || in.LSMT.UserTag != "msg" || in.LSMT.ParentUUID != "B1111111-1111-4111-8111-111111111111" {
		t.Fatalf("overlaybd-commit -zt: %v %+v %+v", in.Chain, in.ZFile, in.LSMT)
	}
	// Byte-identical to obd commit for the uncompressed form.
	copyFile(t, filepath.Join(bstack, "b2.rw.data"), p("b2.data"))
	copyFile(t, filepath.Join(bstack, "b2.rw.index"), p("b2.index"))
	mustTool(t, "overlaybd-commit", "--uuid", "b2222222-2222-4222-8222-222222222222", "-p", "b1111111-1111-4111-8111-111111111111",
		p("b2.data"), p("b2.index"), p("b2.commit"))
	if fileSHA(t, p("b2.commit")) != fileSHA(t, filepath.Join(bstack, "b2.commit")) {
		t.Fatal("overlaybd-commit output differs from the reference's b2.commit")
	}
	// --commit_sealed: the second argument is the output.
	mustTool(t, "overlaybd-commit", "-z", "--commit_sealed", p("b2.commit"), p("b2.lz4"))
	if in := inspectJSON(t, p("b2.lz4")); strings.Join(in.Chain, ",") != "zfile,lsmt:sealed" || in.ZFile.Algorithm != "lz4" {
		t.Fatalf("overlaybd-commit --commit_sealed: %v", in.Chain)
	}
	// -f replaces an existing output; --seal seals in place.
	mustTool(t, "overlaybd-commit", "-f", p("b2.data"), p("b2.index"), p("b2.lz4"))
	mustTool(t, "overlaybd-commit", p("b2.data"), p("b2.index"), "--seal")
	if in := inspectJSON(t, p("b2.data")); in.LSMT.Kind != "sealed" {
		t.Fatalf("overlaybd-commit --seal: %+v", in.LSMT)
	}
	for _, bad := range [][]string{{"--upload", "http://x", p("a.data"), p("a.index"), p("o")}, {"-z", "--bs", "3", p("a.data"), p("a.index"), p("o")}, {"--nope", p("a.data")}} {
		if out, err := runTool(t, "overlaybd-commit", bad...); err == nil {
			t.Errorf("overlaybd-commit %v succeeded: %s", bad, out)
		}
	}

	// overlaybd-zfile: compress (-t wraps in a tar), --verify, -x (also through the tar), -f.
	raw := p("raw")
	mustObd(t, "export", "-o", raw, filepath.Join(bstack, "b0.commit"))
	mustTool(t, "overlaybd-zfile", "--algorithm", "zstd", "--bs", "8", raw, p("raw.z"))
	mustTool(t, "overlaybd-zfile", raw, p("raw.tz"), "-t")
	if in := inspectJSON(t, p("raw.tz")); strings.Join(in.Chain, ",") != "tar,zfile,raw" {
		t.Fatalf("overlaybd-zfile -t: %v", in.Chain)
	}
	mustTool(t, "overlaybd-zfile", "--verify", p("raw.z"))
	mustTool(t, "overlaybd-zfile", "-x", p("raw.z"), p("back"))
	mustTool(t, "overlaybd-zfile", "-x", "-f", p("raw.tz"), p("back"))
	if fileSHA(t, p("back")) != vdiskL0 {
		t.Fatal("overlaybd-zfile round trip differs")
	}

	// overlaybd-merge CONFIG OUT: the config's layers, compressed by default.
	b := func(n string) string {
		abs, _ := filepath.Abs(filepath.Join(bstack, n))
		return abs
	}
	cfg := `{"lowers":[{"file":"` + b("b0.commit") + `"},{"file":"` + b("b1.commit") + `"},{"file":"` + b("b2.commit") + `"}]}`
	os.WriteFile(p("config.v1.json"), []byte(cfg), 0o644)
	mustTool(t, "overlaybd-merge", p("config.v1.json"), p("merged"))
	if in := inspectJSON(t, p("merged")); strings.Join(in.Chain, ",") != "zfile,lsmt:sealed" {
		t.Fatalf("overlaybd-merge: %v", in.Chain)
	}
	mustTool(t, "overlaybd-merge", "--compress=false", p("config.v1.json"), p("merged.commit"))
	if fileSHA(t, p("merged.commit")) != fileSHA(t, b("merged.commit")) {
		t.Fatal("overlaybd-merge --compress=false differs from the reference's merged.commit")
	}
}

// overlaybd-create --mkfs formats the disk as ext4 with the reference's parameters.
func TestCreateMkfs(t *testing.T) {
	for _, tool := range []string{"e2fsck", "dumpe2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (make test installs e2fsprogs): %v", tool, err)
		}
	}
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	mustTool(t, "overlaybd-create", p("d"), p("i"), "8", "--mkfs")
	mustObd(t, "create", "--sparse", "--mkfs", p("s"), p("unused"), "1G")
	for _, args := range [][]string{{"--upper-data", p("d"), "--upper-index", p("i")}, {"--upper-data", p("s")}} {
		raw := p("raw")
		os.Remove(raw)
		mustObd(t, append([]string{"export", "-o", raw}, args...)...)
		if out, err := exec.Command("e2fsck", "-fn", raw).CombinedOutput(); err != nil {
			t.Fatalf("e2fsck -fn of the --mkfs disk: %v\n%s", err, out)
		}
		out, err := exec.Command("dumpe2fs", "-h", raw).CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		h := string(out)
		for _, want := range []string{"Filesystem UUID:          bdf7bb2e-c231-43ce-87c2-299792458ef5", "Block size:               4096", "Inode size:\t          256",
			"Default directory hash:   half_md4", "Maximum mount count:      -1", "sparse_super2", "flex_bg", "64bit", "extent"} {
			if !strings.Contains(h, want) {
				t.Errorf("dumpe2fs: no %q in\n%s", want, h)
			}
		}
		if strings.Contains(h, "has_journal") || strings.Contains(h, "metadata_csum") {
			t.Errorf("dumpe2fs: journal or metadata_csum present:\n%s", h)
		}
	}
	assertNoTemp(t, dir)
}
