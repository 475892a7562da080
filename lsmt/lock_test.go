package lsmt

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// openFiles opens dir/name.data and, unless sparse, dir/name.index read-write.
func openFiles(t *testing.T, dir, name string, sparse bool) (*os.File, *os.File) {
	t.Helper()
	data, err := os.OpenFile(filepath.Join(dir, name+".data"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { data.Close() })
	if sparse {
		return data, nil
	}
	index, err := os.OpenFile(filepath.Join(dir, name+".index"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { index.Close() })
	return data, index
}

func TestWritableIsExclusive(t *testing.T) {
	for _, sparse := range []bool{false, true} {
		dir := t.TempDir()
		w := newWritableFiles(t, dir, "l", CreateOptions{VirtualSize: 1 << 20, Sparse: sparse})
		w.SetHolderNote("device 7")
		// A second open in the same process conflicts (flock is per open file).
		data, index := openFiles(t, dir, "l", sparse)
		_, err := OpenWritable(data, index)
		var inUse *InUseError
		if !errors.As(err, &inUse) {
			t.Fatalf("sparse=%v: second OpenWritable: %v, want an InUseError", sparse, err)
		}
		msg := err.Error()
		if inUse.PID != os.Getpid() || !strings.Contains(msg, "pid "+strconv.Itoa(os.Getpid())) || !strings.Contains(msg, "l.data") {
			t.Fatalf("sparse=%v: error does not name the holder and file: %v", sparse, err)
		}
		// The note is kept where the file system has user xattrs (ext4, tmpfs >= 6.6).
		if inUse.Note != "" && inUse.Note != "device 7" {
			t.Fatalf("holder note %q, want device 7", inUse.Note)
		}
		if err := LockedBy(filepath.Join(dir, "l.data")); err == nil {
			t.Fatal("LockedBy reports a locked layer free")
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := LockedBy(filepath.Join(dir, "l.data")); err != nil {
			t.Fatalf("LockedBy after Close: %v", err)
		}
		// Closed: the layer opens again.
		w2, err := OpenWritable(data, index)
		if err != nil {
			t.Fatalf("sparse=%v: OpenWritable after Close: %v", sparse, err)
		}
		w2.Close()
	}
}

func TestOpenWritableRefusesSealed(t *testing.T) {
	for _, sparse := range []bool{false, true} {
		dir := t.TempDir()
		w := newWritableFiles(t, dir, "l", CreateOptions{VirtualSize: 1 << 20, Sparse: sparse})
		if _, err := w.WriteAt(make([]byte, 4096), 8192); err != nil {
			t.Fatal(err)
		}
		if err := w.CloseSeal(nil); err != nil {
			t.Fatal(err)
		}
		data, index := openFiles(t, dir, "l", sparse)
		_, err := OpenWritable(data, index)
		if err == nil || !strings.Contains(err.Error(), "sealed in place") {
			t.Fatalf("sparse=%v: OpenWritable of a sealed layer: %v", sparse, err)
		}
	}
	// A committed layer given as the data file.
	dir := t.TempDir()
	w := newWritableFiles(t, dir, "l", CreateOptions{VirtualSize: 1 << 20})
	commitToLayer(t, filepath.Join(dir, "c.data"), w.CommitSource(), CommitOptions{})
	w.Close()
	_, index := openFiles(t, dir, "l", false)
	data, _ := openFiles(t, dir, "c", true)
	if _, err := OpenWritable(data, index); err == nil || !strings.Contains(err.Error(), "sealed (committed) layer") {
		t.Fatalf("OpenWritable of a committed layer: %v", err)
	}
	// Data and index swapped.
	data, index = openFiles(t, dir, "l", false)
	if _, err := OpenWritable(index, data); err == nil || !strings.Contains(err.Error(), "swapped") {
		t.Fatalf("OpenWritable with DATA and INDEX swapped: %v", err)
	}
}

func TestOpenWritableRefusesMismatchedPair(t *testing.T) {
	dir := t.TempDir()
	a := newWritableFiles(t, dir, "a", CreateOptions{VirtualSize: 1 << 20})
	b := newWritableFiles(t, dir, "b", CreateOptions{VirtualSize: 1 << 20})
	if _, err := b.WriteAt(make([]byte, 1<<16), 0); err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	aData, aIndex := openFiles(t, dir, "a", false)
	_, bIndex := openFiles(t, dir, "b", false)
	_, err := OpenWritable(aData, bIndex)
	if err == nil || !strings.Contains(err.Error(), "a.data") || !strings.Contains(err.Error(), "b.index") {
		t.Fatalf("OpenWritable(a.data, b.index): %v, want an error naming both files", err)
	}
	// The right pair still opens.
	w, err := OpenWritable(aData, aIndex)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
}

// TestIndexBeyondDataIsDropped: records whose data lies past the end of the data
// file (the shape a power loss leaves: the index reached the disk, the data did not)
// are dropped and reported, not fatal for the layer; a data/index pair from two
// different layers is caught by the uuid check (TestOpenWritableRefusesMismatchedPair).
func TestIndexBeyondDataIsDropped(t *testing.T) {
	dir := t.TempDir()
	w := newWritableFiles(t, dir, "l", CreateOptions{VirtualSize: 1 << 20})
	if _, err := w.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(make([]byte, 1<<16), 8192); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := os.Truncate(filepath.Join(dir, "l.data"), HeaderSize+4096); err != nil {
		t.Fatal(err)
	}
	data, index := openFiles(t, dir, "l", false)
	w2, err := OpenWritable(data, index)
	if err != nil {
		t.Fatalf("index records beyond the data file: %v, want them dropped", err)
	}
	defer w2.Close()
	if d := w2.Dropped(); d.Records != 1 {
		t.Fatalf("dropped %d records, want 1", d.Records)
	}
}
