package trace

import (
	"bytes"
	"errors"
	"os"
	"path"
	"strings"
	"testing"
)

// goldenHead returns the first n bytes of a reference-written file from testdata, to
// seed the fuzzers with real non-trace input (a trace path may hold anything).
func goldenHead(f *testing.F, name string, n int) []byte {
	b, err := os.ReadFile("../testdata/golden/reference/" + name)
	if err != nil {
		f.Fatal(err)
	}
	return b[:min(n, len(b))]
}

func FuzzReadTrace(f *testing.F) {
	var buf bytes.Buffer
	WriteTrace(&buf, []Record{{OpRead, 0, 4096, 0}, {OpRead, 2, 512, 1 << 30}, {OpWrite, 1, 7, 9}})
	f.Add(buf.Bytes())
	buf.Reset()
	WriteTrace(&buf, nil)
	f.Add(buf.Bytes())
	f.Add(refTrace([8]byte{9, 9, 9, 9, 9, 9, 9, 9}, refRecord('R', [3]byte{1, 2, 3}, 4, 5, 6)))
	f.Add(goldenHead(f, "c_zfile/raw4m.lz4.zfile", 200))
	f.Add(goldenHead(f, "b_stack/b0.commit", 200))
	f.Add([]byte("/usr/bin/python3\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Detect(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err) // a bytes.Reader of the right size never fails
		}
		recs, err := ReadTrace(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if m != ModeReplayTrace {
			t.Fatalf("ReadTrace accepted input Detect calls %v", m)
		}
		if len(data) != HeaderSize+RecordSize*len(recs) {
			t.Fatalf("%d records from %d bytes", len(recs), len(data))
		}
		// Re-encoding keeps every field; only padding may differ.
		var out bytes.Buffer
		if err := WriteTrace(&out, recs); err != nil {
			t.Fatal(err)
		}
		again, err := ReadTrace(bytes.NewReader(out.Bytes()), int64(out.Len()))
		if err != nil || !equalRecords(again, recs) {
			t.Fatalf("re-encoded trace: %v", err)
		}
		for i, r := range recs {
			b := data[HeaderSize+i*RecordSize:]
			if b[0] != byte(r.Op) || !bytes.Equal(b[4:24], out.Bytes()[HeaderSize+i*RecordSize+4:][:20]) {
				t.Fatalf("record %d fields differ after re-encoding", i)
			}
		}
	})
}

func FuzzParseFileList(f *testing.F) {
	f.Add([]byte("/usr/bin/python3\n/etc/\n  /var/lib/*\r\nrelative/path\n"))
	f.Add([]byte("/\n.\n..\n/a/../..\n//x\n/a b\n"))
	f.Add([]byte(""))
	f.Add(goldenHead(f, "d_ext4/expected-tree-d0.txt", 4096))
	f.Add(goldenHead(f, "c_zfile/raw4m.lz4.zfile", 600))
	f.Fuzz(func(t *testing.T, data []byte) {
		fl, err := ParseFileList(data)
		if len(data) > MaxFileListSize {
			if err == nil {
				t.Fatal("oversized list accepted")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Count(string(data), "\n") + 1
		if len(fl.Entries)+len(fl.Skipped) > lines {
			t.Fatalf("%d entries + %d skipped from %d lines", len(fl.Entries), len(fl.Skipped), lines)
		}
		for _, e := range fl.Entries {
			if e.Path == "/" || !strings.HasPrefix(e.Path, "/") || path.Clean(e.Path) != e.Path {
				t.Fatalf("entry path %q is not a clean absolute non-root path", e.Path)
			}
			for i := 1; i < len(e.Path); i++ {
				if c := e.Path[i]; c != '/' && !pathByte(c) {
					t.Fatalf("entry path %q has byte %#x", e.Path, c)
				}
			}
		}
		for _, s := range fl.Skipped {
			if s.Line < 1 || s.Line > lines || s.Reason == "" || len(s.Text) > 256 {
				t.Fatalf("bad skipped line %+v", s)
			}
		}
	})
}
