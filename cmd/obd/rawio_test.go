package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rawFile reads and writes what os.File does, and its failures are os.File's:
// short reads at the end (io.EOF), errors naming the file.
func TestRawFile(t *testing.T) {
	name := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rf := rawFile{f}
	data := bytes.Repeat([]byte("0123456789abcdef"), 40000)
	if n, err := rf.WriteAt(data[100:], 100); err != nil || n != len(data)-100 {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	if n, err := rf.WriteAt(data[:100], 0); err != nil || n != 100 {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	got := make([]byte, len(data))
	if n, err := rf.ReadAt(got, 0); err != nil || n != len(data) || !bytes.Equal(got, data) {
		t.Fatalf("ReadAt = %d, %v; equal %v", n, err, bytes.Equal(got, data))
	}
	if n, err := rf.ReadAt(got, 1000); n != len(data)-1000 || err != io.EOF || !bytes.Equal(got[:n], data[1000:]) {
		t.Fatalf("ReadAt across the end = %d, %v; want %d, EOF", n, err, len(data)-1000)
	}
	if n, err := rf.ReadAt(got[:0], 5); n != 0 || err != nil {
		t.Fatalf("empty ReadAt = %d, %v", n, err)
	}
	if _, err := rf.ReadAt(got, -1); err == nil {
		t.Fatal("ReadAt at a negative offset succeeded")
	}
	// A write to a file opened read-only fails as os.File's does, naming the file.
	ro, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := (rawFile{ro}).WriteAt([]byte{1}, 0); err == nil || !strings.Contains(err.Error(), name) {
		t.Fatalf("WriteAt on a read-only file: %v, want an error naming %s", err, name)
	}
	// A closed file too.
	ro.Close()
	if _, err := (rawFile{ro}).ReadAt(got, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("ReadAt of a closed file: %v", err)
	}
}
