package cache

import (
	"os"
	"testing"
)

// Complete is true exactly when every unit has a valid record: open or closed,
// and not for another size, another unit size or a damaged record.
func TestComplete(t *testing.T) {
	dir := t.TempDir()
	o := testOptions()
	c := openCache(t, dir, o)
	src := newSource(11, 5*o.RefillSize+123) // a short last unit
	size := src.Size()
	if c.Complete(testKey, size) {
		t.Fatal("Complete before anything was cached")
	}
	b, err := c.Open(testKey, src)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, o.RefillSize)
	if _, err := b.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if c.Complete(testKey, size) {
		t.Fatal("Complete (open) with one unit cached")
	}
	readAll(t, b, src.data, 7000)
	if !c.Complete(testKey, size) {
		t.Fatal("not Complete (open) after reading everything")
	}
	if c.Complete(testKey, size+1) || c.Complete(testKey+"0", size) {
		t.Fatal("Complete for another size or key")
	}
	b.Close()
	if !c.Complete(testKey, size) {
		t.Fatal("not Complete (closed) after reading everything")
	}
	if c.Complete(testKey, size-1) {
		t.Fatal("Complete (closed) for another size")
	}
	// Another unit size: the meta file does not describe this cache's units.
	o2 := o
	o2.RefillSize *= 2
	if openCache(t, dir, o2).Complete(testKey, size) {
		t.Fatal("Complete with another refill size")
	}
	// Damage the record of unit 3: no longer complete.
	_, meta := blobFiles(t, dir, testKey)
	f, err := os.OpenFile(meta, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, recordOffset(3, o.RefillSize)+recHeadSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if c.Complete(testKey, size) {
		t.Fatal("Complete with a damaged record")
	}
	if c.Complete("", 1) || c.Complete(testKey, -1) {
		t.Fatal("Complete for an empty key or negative size")
	}
}
