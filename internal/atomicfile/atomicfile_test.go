package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// onlyEntries fails the test unless dir holds exactly the names given (no
// temporary file left behind).
func onlyEntries(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if len(got) != len(names) {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
	for i := range names {
		if got[i] != names[i] {
			t.Fatalf("%s holds %v, want %v", dir, got, names)
		}
	}
}

func TestWriteFileReplacesWithMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "new" {
		t.Fatalf("content %q, %v; want \"new\"", b, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	onlyEntries(t, dir, "state.json")
}

func TestWriteFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "trace")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := Write(p, 0o644, func(w io.Writer) error {
		w.Write([]byte("half"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Write: %v, want boom", err)
	}
	b, _ := os.ReadFile(p)
	if string(b) != "old" {
		t.Fatalf("content %q after a failed write, want \"old\"", b)
	}
	onlyEntries(t, dir, "trace")
}

func TestRenameNoReplace(t *testing.T) {
	dir := t.TempDir()
	tmp, dst := filepath.Join(dir, ".out.tmp"), filepath.Join(dir, "out")
	os.WriteFile(tmp, []byte("new"), 0o644)
	os.WriteFile(dst, []byte("other"), 0o644)
	if err := RenameNoReplace(tmp, dst); !errors.Is(err, os.ErrExist) {
		t.Fatalf("RenameNoReplace over an existing file: %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "other" {
		t.Fatalf("dst replaced: %q", b)
	}
	os.Remove(dst)
	if err := RenameNoReplace(tmp, dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "new" {
		t.Fatalf("dst %q, want \"new\"", b)
	}
	onlyEntries(t, dir, "out")
}

func TestRename(t *testing.T) {
	dir := t.TempDir()
	tmp, dst := filepath.Join(dir, "a.download"), filepath.Join(dir, "a.commit")
	os.WriteFile(tmp, []byte("new"), 0o644)
	os.WriteFile(dst, []byte("old"), 0o644)
	if err := Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "new" {
		t.Fatalf("dst %q, want \"new\"", b)
	}
	onlyEntries(t, dir, "a.commit")
}
