package zfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/obd-project/obd/crc32c"
)

// FuzzOpen feeds arbitrary bytes to Open and, when it succeeds, to ReadAt and
// Verify: no panic, no hang, and any data returned must come with a consistent count.
func FuzzOpen(f *testing.F) {
	small := testData(1, 9000, true)
	for _, o := range []Options{{}, {Algorithm: Zstd}, {NoCRC: true}, {BlockSize: 8192}} {
		var m memFile
		Compress(&m, bytes.NewReader(small), o)
		f.Add(m.b, false)
		var buf bytes.Buffer // 0x13 header: index in the trailer
		Compress(&buf, bytes.NewReader(small[:100]), o)
		f.Add(buf.Bytes(), true)
	}
	var empty bytes.Buffer
	Compress(&empty, bytes.NewReader(nil), Options{})
	f.Add(empty.Bytes(), false)
	// Golden heads and tails: the legacy header (garbage flags) over a small body, and
	// the start and end of a reference-written file.
	legacy := legacyExt4(f)
	var m memFile
	Compress(&m, bytes.NewReader(small), Options{})
	withLegacy := append(append([]byte(nil), legacy[:HeaderSize]...), m.b[HeaderSize:]...)
	f.Add(withLegacy, true)
	// Without digests, mutations reach the jump table and block checks.
	var plain bytes.Buffer
	Compress(&plain, bytes.NewReader(small), Options{Workers: 1})
	nd := plain.Bytes()
	for _, off := range []int{0, len(nd) - HeaderSize} {
		r, _ := decodeRecord(nd[off:])
		r.Flags &^= FlagDigest
		copy(nd[off:], r.encode())
	}
	f.Add(nd, false)
	ref := readGolden(f, "reference/c_zfile/raw4m.zstd-bs8k.zfile")
	f.Add(append(append([]byte(nil), ref[:2048]...), ref[len(ref)-2048:]...), false)

	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix {
			// Let mutations get past the digests to the checks behind them.
			fixDigests(b)
		}
		z, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if z != nil {
				t.Fatal("reader returned with an error")
			}
			return
		}
		info := z.Info()
		if info.Blocks*4 > int64(len(b)) || z.Size() > info.Blocks*int64(info.BlockSize) {
			t.Fatalf("layout claims more than the file holds: %+v", info)
		}
		limit := min(z.Size(), 256<<10)
		p := make([]byte, 70000)
		for off := int64(0); off < limit; off += int64(len(p)) {
			n, err := z.ReadAt(p, off)
			if n > len(p) || (n < len(p) && err == nil) {
				t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
			}
			var berr *BlockError
			if err != nil && err != io.EOF && !errors.As(err, &berr) {
				t.Fatalf("ReadAt(%d): unexpected error type %v", off, err)
			}
		}
		if z.Size() <= 1<<20 {
			z.Verify()
			var out bytes.Buffer
			n, err := z.WriteTo(&out)
			var berr *BlockError
			if n != int64(out.Len()) || (err == nil && n != z.Size()) || (err != nil && !errors.As(err, &berr)) {
				t.Fatalf("WriteTo = %d (%d written), %v; size %d", n, out.Len(), err, z.Size())
			}
		}
	})
}

// fixDigests recomputes the index CRC and digest of the header and trailer of b
// in place, wherever their fields point inside b.
func fixDigests(b []byte) {
	if len(b) < 2*HeaderSize {
		return
	}
	for _, off := range []int{0, len(b) - HeaderSize} {
		r, ok := decodeRecord(b[off:])
		if !ok || !r.Has(FlagDigest) {
			continue
		}
		if r.IndexOffset <= uint64(len(b)) && r.IndexSize <= uint64(len(b))/4 &&
			r.IndexOffset+4*r.IndexSize <= uint64(len(b)) {
			r.IndexCRC = crc32c.Checksum(b[r.IndexOffset : r.IndexOffset+4*r.IndexSize])
			binary.LittleEndian.PutUint32(b[off+64:], r.IndexCRC)
		}
		binary.LittleEndian.PutUint32(b[off+28:], 0)
		binary.LittleEndian.PutUint32(b[off+28:], crc32c.Checksum(b[off:off+HeaderSize]))
	}
}
