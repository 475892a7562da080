package ext4

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"testing"
)

// memDev is an in-memory device for the writer (unwritten bytes read as zeros).
type memDev struct{ b []byte }

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(d.b)) {
		return 0, fmt.Errorf("read at %d outside the device", off)
	}
	n := copy(p, d.b[off:])
	if n < len(p) {
		return n, fmt.Errorf("short read at %d", off)
	}
	return n, nil
}

func (d *memDev) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(d.b)) {
		return 0, fmt.Errorf("write at %d+%d outside the device", off, len(p))
	}
	return copy(d.b[off:], p), nil
}

// Edits on a file system with damaged metadata end in errors, never a panic.
func TestWriterCorruptImage(t *testing.T) {
	base := &memDev{b: make([]byte, MinMkfsSize)}
	if err := Mkfs(base, MinMkfsSize); err != nil {
		t.Fatal(err)
	}
	w, err := OpenWriter(base)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := w.Mkdir(RootIno, "d", Attr{Mode: 0o755})
	for i := range 40 {
		w.Create(d, fmt.Sprint("f", i), Attr{Mode: ModeRegular | 0o644, Xattrs: map[string][]byte{"user.x": bytes.Repeat([]byte("x"), i*20)}},
			bytes.NewReader(bytes.Repeat([]byte{byte(i)}, i*3000)), int64(i*3000))
	}
	w.Symlink(d, "s", string(bytes.Repeat([]byte("t"), 200)), Attr{})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Metadata lives in the first blocks: superblock, descriptors, bitmaps, inode
	// table, then directory, extent and xattr blocks.
	used := 0
	for i := len(base.b) - 1; i >= 0; i-- {
		if base.b[i] != 0 {
			used = i + 1
			break
		}
	}
	rnd := rand.New(rand.NewPCG(5, 5))
	for iter := range 400 {
		dev := &memDev{b: append([]byte(nil), base.b...)}
		for range 1 + rnd.IntN(8) {
			off := rnd.IntN(min(used, 700*4096))
			if rnd.IntN(2) == 0 {
				off = 1024 + rnd.IntN(4096) // superblock and descriptors
			}
			dev.b[off] = byte(rnd.Uint32())
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("iteration %d: panic: %v\n%s", iter, r, debug.Stack())
				}
			}()
			w, err := OpenWriter(dev)
			if err != nil {
				return
			}
			dd, _, _ := w.Lookup(RootIno, "d")
			w.Create(dd, "new", Attr{Mode: ModeRegular | 0o644}, bytes.NewReader(make([]byte, 9000)), 9000)
			w.Remove(dd, fmt.Sprint("f", rnd.IntN(40)))
			w.Remove(RootIno, "d")
			w.Close()
		}()
	}
}
