package cache

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

func TestMetaRoundTrip(t *testing.T) {
	h := metaHeader{UnitSize: 64 << 10, BlobSize: 1<<30 + 5, KeyCRC: 0xdeadbeef}
	got, err := decodeHeader(h.encode())
	if err != nil || got != h {
		t.Fatalf("header round trip: %+v, %v", got, err)
	}
	data := testData(40, 64<<10-100)
	crcs := pageCRCs(data)
	rec := make([]byte, recordSize(64<<10))
	encodeRecord(rec, 7, len(data), 12345, crcs)
	c2, at, err := decodeRecord(rec, 7, len(data))
	if err != nil || at != 12345 || !slicesEqual(c2, crcs) {
		t.Fatalf("record round trip: %v, %d, %v", c2, at, err)
	}
	// The record is bound to its unit and length.
	if _, _, err := decodeRecord(rec, 8, len(data)); err == nil {
		t.Error("record accepted for another unit")
	}
	if _, _, err := decodeRecord(rec, 7, len(data)+1); err == nil {
		t.Error("record accepted for another length")
	}
	// The access time is a hint outside the CRC.
	rec[9] ^= 0xff
	if _, _, err := decodeRecord(rec, 7, len(data)); err != nil {
		t.Errorf("access time change rejected: %v", err)
	}
	if _, _, err := decodeRecord(make([]byte, len(rec)), 7, len(data)); !errors.Is(err, errAbsent) {
		t.Errorf("zero record: %v, want errAbsent", err)
	}
	for i := 0; i < headerSize; i++ {
		b := h.encode()
		b[i] ^= 4
		if _, err := decodeHeader(b); err == nil {
			t.Errorf("header with byte %d changed accepted", i)
		}
	}
}

// seedMeta is a meta file written by the cache itself.
func seedMeta(t testing.TB) []byte {
	dir := t.TempDir()
	src := newSource(41, 5*(16<<10)+99)
	o := testOptions()
	o.ReadAhead = -1
	c, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := c.Open(testKey, src)
	if err != nil {
		t.Fatal(err)
	}
	b.ReadAt(make([]byte, 100), 0)
	b.ReadAt(make([]byte, 100), 3*(16<<10))
	b.ReadAt(make([]byte, 100), 5*(16<<10))
	b.Close()
	_, meta := blobFiles(t, dir, testKey)
	m, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// FuzzMeta: the parsers never panic, and whatever they accept re-encodes to the
// same bytes (so nothing is accepted that the cache did not write).
func FuzzMeta(f *testing.F) {
	f.Add(seedMeta(f))
	f.Add(metaHeader{UnitSize: 4096, BlobSize: 10000}.encode())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHeader(b)
		us, size := 16<<10, int64(1<<40)
		if err == nil {
			if !bytes.Equal(h.encode(), b[:headerSize]) {
				t.Fatal("accepted header does not re-encode to itself")
			}
			us, size = int(h.UnitSize), h.BlobSize
		}
		if len(b) < headerSize {
			return
		}
		rs := recordSize(us)
		for u := 0; headerSize+(u+1)*rs <= len(b) && u < 1000; u++ {
			rec := b[headerSize+u*rs : headerSize+(u+1)*rs]
			want := int(max(min(size-int64(u)*int64(us), int64(us)), -1))
			crcs, at, err := decodeRecord(rec, u, want)
			if err != nil {
				continue
			}
			re := make([]byte, rs)
			encodeRecord(re, u, want, at, crcs)
			if !bytes.Equal(re, rec) {
				t.Fatalf("accepted record %d does not re-encode to itself", u)
			}
		}
	})
}

// FuzzCorruptMeta puts arbitrary bytes in place of a blob's meta file: the cache
// still serves exactly the source's bytes.
func FuzzCorruptMeta(f *testing.F) {
	f.Add(seedMeta(f), uint16(0), byte(0))
	f.Add(seedMeta(f), uint16(200), byte(1))
	f.Add([]byte("OBDCACHE"), uint16(3), byte(0xff))
	f.Fuzz(func(t *testing.T, meta []byte, at uint16, x byte) {
		dir := t.TempDir()
		src := newSource(41, 5*(16<<10)+99)
		o := testOptions()
		o.ReadAhead = -1
		c := openCache(t, dir, o)
		b := openBlob(t, c, testKey, src)
		readAll(t, b, src.data, 16<<10)
		b.Close()
		data, mp := blobFiles(t, dir, testKey)
		if err := os.WriteFile(mp, meta, 0o644); err != nil {
			t.Fatal(err)
		}
		patch(t, data, int64(at)*7, func(p []byte) {
			if len(p) > 0 {
				p[0] ^= x
			}
		})
		b2 := openBlob(t, c, testKey, src)
		readAll(t, b2, src.data, 5000)
	})
}
