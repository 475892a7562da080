package trace

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseFileList(t *testing.T) {
	in := strings.Join([]string{
		"/usr/bin/python3",
		"",
		"   /etc/ssl/  ",             // spaces trimmed, trailing slash walks
		"overlaybd-1.0.12/README.md", // relative: from the root, as the reference
		"/var/lib/app/*",             // "/*" walks too
		"/opt/x.y_z-1\r",             // CRLF line
		"\t/srv//data",               // double slash
		"/home/user name",            // space inside
		"# a comment",                // '#' is not a name character
		"/",                          // the whole image
		"/a/..",                      // resolves to the root
		"/lib*",                      // '*' only as "/*"
		"/usr/./lib/../lib64/",       // cleaned
		"/données",                   // non-ASCII
		"  ",                         // blank
	}, "\n")
	fl, err := ParseFileList([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []FileEntry{
		{"/usr/bin/python3", false},
		{"/etc/ssl", true},
		{"/overlaybd-1.0.12/README.md", false},
		{"/var/lib/app", true},
		{"/opt/x.y_z-1", false},
		{"/usr/lib64", true},
	}
	if len(fl.Entries) != len(want) {
		t.Fatalf("entries %v, want %v", fl.Entries, want)
	}
	for i := range want {
		if fl.Entries[i] != want[i] {
			t.Errorf("entry %d = %v, want %v", i, fl.Entries[i], want[i])
		}
	}
	wantSkipped := map[int]string{
		7: "empty path component", 8: "character ' '", 9: "character '#'", 10: "root directory",
		11: "root directory", 12: "character '*'", 14: "byte 0xc3",
	}
	if len(fl.Skipped) != len(wantSkipped) {
		t.Fatalf("skipped %+v", fl.Skipped)
	}
	for _, s := range fl.Skipped {
		if w, ok := wantSkipped[s.Line]; !ok || !strings.Contains(s.Reason, w) {
			t.Errorf("line %d skipped as %q, want %q", s.Line, s.Reason, w)
		}
	}
}

func TestParseFileListLimits(t *testing.T) {
	big := bytes.Repeat([]byte("/a\n"), MaxFileListSize/3+1)
	if _, err := ParseFileList(big); err == nil || !strings.Contains(err.Error(), "65536-byte limit") {
		t.Fatalf("oversized list: %v", err)
	}
	exact := bytes.Repeat([]byte("/abcdefg\n"), 1<<16/9)
	exact = append(exact, bytes.Repeat([]byte(" "), MaxFileListSize-len(exact))...)
	fl, err := ParseFileList(exact)
	if err != nil || len(fl.Entries) != 1<<16/9 {
		t.Fatalf("64 KiB list: %v", err)
	}
	// ReadFileList refuses a forged size before allocating it.
	if _, err := ReadFileList(bytes.NewReader(nil), 1<<40); err == nil {
		t.Fatal("accepted a 1 TiB file list")
	}
	if _, err := ReadFileList(bytes.NewReader([]byte("/a")), 10); err == nil {
		t.Fatal("accepted a short read")
	}
	long := "/" + strings.Repeat("?", 1000)
	fl, _ = ParseFileList([]byte(long))
	if len(fl.Skipped) != 1 || len(fl.Skipped[0].Text) != 256 {
		t.Fatalf("long bad line kept as %d bytes", len(fl.Skipped[0].Text))
	}
}

func TestReadFileListFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "list")
	os.WriteFile(p, []byte("/bin/sh\n/etc/\n"), 0o644)
	if m, _ := DetectMode(p); m != ModeReplayFileList {
		t.Fatalf("mode %v", m)
	}
	fl, err := ReadFileListFile(p)
	if err != nil || len(fl.Entries) != 2 || fl.Entries[1] != (FileEntry{"/etc", true}) {
		t.Fatalf("%+v, %v", fl, err)
	}
	if _, err := ReadFileListFile(p + ".missing"); err == nil {
		t.Fatal("missing file read")
	}
}

func TestFileExtentRecords(t *testing.T) {
	R := func(off int64, n uint64) Record { return Record{OpRead, 0, n, off} }
	cases := []struct {
		name string
		size int64
		ext  []Extent
		want []Record
	}{
		{"small file: capped at round_up(size, 512)", 1000, []Extent{{1 << 20, 4096}}, []Record{R(1<<20, 1024)}},
		{"sliced at 1 MiB, cap across extents", 3<<20 + 100, []Extent{{0, 2 << 20}, {8 << 20, 2 << 20}, {64 << 20, 4096}},
			[]Record{R(0, MaxIOSize), R(MaxIOSize, MaxIOSize), R(8<<20, MaxIOSize), R(9<<20, 512)}},
		{"empty file", 0, []Extent{{0, 4096}}, nil},
		{"bad extents ignored", 4096, []Extent{{-1, 4096}, {0, 0}, {4096, 4096}}, []Record{R(4096, 4096)}},
		{"huge size", 1<<63 - 1, []Extent{{512, 1024}}, []Record{R(512, 1024)}},
	}
	for _, c := range cases {
		if got := FileExtentRecords(c.size, c.ext); !equalRecords(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
