package trace

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// rawCRC32C is an independent bitwise raw CRC32C (reflected 0x82F63B78, no
// inversions), so the trace checksum is not checked against the code under test.
func rawCRC32C(crc uint32, p []byte) uint32 {
	for _, b := range p {
		crc ^= uint32(b)
		for i := 0; i < 8; i++ {
			if crc&1 != 0 {
				crc = crc>>1 ^ 0x82F63B78
			} else {
				crc >>= 1
			}
		}
	}
	return crc
}

// refRecord lays out a TraceFormat struct as the reference's x86_64 build stores
// it, with the given bytes in the three padding bytes after op.
func refRecord(op byte, pad [3]byte, layer uint32, count uint64, offset int64) []byte {
	b := make([]byte, 24)
	b[0] = op
	copy(b[1:4], pad[:])
	binary.LittleEndian.PutUint32(b[4:], layer)
	binary.LittleEndian.PutUint64(b[8:], count)
	binary.LittleEndian.PutUint64(b[16:], uint64(offset))
	return b
}

// refTrace builds a whole trace file the way the reference's dump() does, with
// arbitrary bytes in the header padding.
func refTrace(hdrPad [8]byte, recs ...[]byte) []byte {
	var crc uint32
	var body []byte
	for _, r := range recs {
		crc = rawCRC32C(crc, r)
		body = append(body, r...)
	}
	h := make([]byte, 24)
	binary.LittleEndian.PutUint32(h[0:], 0xC2EF1820)
	copy(h[4:8], hdrPad[:4])
	binary.LittleEndian.PutUint64(h[8:], uint64(len(body)))
	binary.LittleEndian.PutUint32(h[16:], crc)
	copy(h[20:24], hdrPad[4:])
	return append(h, body...)
}

func TestMagicIsCRC32OfName(t *testing.T) {
	// The reference derives the magic as the IEEE CRC32 of this string.
	if got := crc32.ChecksumIEEE([]byte("Container Image Trace Format")); got != Magic {
		t.Fatalf("crc32(IEEE) of the name = %#x, Magic = %#x", got, Magic)
	}
}

func TestReadTraceReferenceBytes(t *testing.T) {
	// Padding in the reference's records is uninitialised stack memory: it is stored
	// and covered by the checksum, so it must be accepted and hashed as stored.
	data := refTrace([8]byte{1, 2, 3, 4, 5, 6, 7, 8},
		refRecord('R', [3]byte{0xde, 0xad, 0xbe}, 0, 4096, 0),
		refRecord('R', [3]byte{0, 0, 0}, 2, 512, 1<<40),
		refRecord('W', [3]byte{0xff, 0x00, 0x7f}, 1, 1<<20, 8192),
	)
	if len(data) != 24+3*24 {
		t.Fatalf("built %d bytes", len(data))
	}
	recs, err := ReadTrace(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	want := []Record{
		{OpRead, 0, 4096, 0},
		{OpRead, 2, 512, 1 << 40},
		{OpWrite, 1, 1 << 20, 8192},
	}
	if !equalRecords(recs, want) {
		t.Fatalf("decoded %v, want %v", recs, want)
	}
}

func TestWriteTraceReferenceBytes(t *testing.T) {
	recs := []Record{{OpRead, 0, 4096, 0}, {OpRead, 3, 65536, 12345 * 512}}
	want := refTrace([8]byte{},
		refRecord('R', [3]byte{}, 0, 4096, 0),
		refRecord('R', [3]byte{}, 3, 65536, 12345*512),
	)
	var buf bytes.Buffer
	if err := WriteTrace(&buf, recs); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteTrace wrote\n%x\nwant\n%x", buf.Bytes(), want)
	}
	// An empty trace is a bare header with data_size 0 and checksum 0.
	buf.Reset()
	if err := WriteTrace(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), refTrace([8]byte{})) {
		t.Fatalf("empty trace = %x", buf.Bytes())
	}
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	for _, n := range []int{0, 1, 2, 100, readChunk - 1, readChunk, readChunk + 1, 3*readChunk + 17} {
		recs := make([]Record, n)
		for i := range recs {
			recs[i] = Record{Op: OpRead, Layer: uint32(rng.Intn(8)), Count: uint64(rng.Intn(1 << 20)), Offset: rng.Int63()}
			if i%5 == 0 {
				recs[i].Op = OpWrite
			}
		}
		var buf bytes.Buffer
		if err := WriteTrace(&buf, recs); err != nil {
			t.Fatal(err)
		}
		if buf.Len() != 24+24*n {
			t.Fatalf("n=%d: wrote %d bytes", n, buf.Len())
		}
		got, err := ReadTrace(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if !equalRecords(got, recs) {
			t.Fatalf("n=%d: round trip differs", n)
		}
	}
}

func TestReadTraceRejectsCorruption(t *testing.T) {
	good := refTrace([8]byte{}, refRecord('R', [3]byte{}, 0, 4096, 0), refRecord('R', [3]byte{}, 1, 512, 512))
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := []struct {
		name string
		data []byte
		want []string // substrings of the error
	}{
		{"empty header", good[:10], []string{"file size 10", "24-byte header"}},
		{"magic", mut(func(b []byte) []byte { b[0] ^= 1; return b }), []string{"magic", "offset 0", "0xc2ef1820", "0xc2ef1821"}},
		{"truncated", good[:len(good)-1], []string{"data_size", "offset 8", "expected 47", "found 48"}},
		{"extended", append(bytes.Clone(good), 0), []string{"data_size", "expected 49", "found 48"}},
		{"data_size", mut(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[8:], 1<<62); return b }), []string{"data_size", "found 4611686018427387904"}},
		{"partial record", func() []byte {
			b := append(bytes.Clone(good), 1, 2, 3)
			binary.LittleEndian.PutUint64(b[8:], 51)
			return b
		}(), []string{"data_size", "51 is not a multiple of the 24-byte record"}},
		{"checksum", mut(func(b []byte) []byte { b[16] ^= 0x80; return b }), []string{"checksum", "offset 16"}},
		{"record pad", mut(func(b []byte) []byte { b[24+1] = 0xaa; return b }), []string{"checksum"}},
		{"record count", mut(func(b []byte) []byte { b[48+8] ^= 1; return b }), []string{"checksum"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			recs, err := ReadTrace(bytes.NewReader(c.data), int64(len(c.data)))
			if err == nil {
				t.Fatalf("accepted: %v", recs)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("error %v does not wrap ErrCorrupt", err)
			}
			for _, s := range c.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}

func TestReadTraceReaderErrors(t *testing.T) {
	good := refTrace([8]byte{}, refRecord('R', [3]byte{}, 0, 4096, 0))
	boom := errors.New("boom")
	_, err := ReadTrace(failingReader{data: good, failAt: 30, err: boom}, int64(len(good)))
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "offset 24") {
		t.Fatalf("got %v", err)
	}
	_, err = ReadTrace(failingReader{data: good, failAt: 0, err: boom}, int64(len(good)))
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "header") {
		t.Fatalf("got %v", err)
	}
}

// A forged size (a caller trusting a header, or a file shrinking under us) must not
// make ReadTrace allocate for records it cannot read.
func TestReadTraceForgedSizeBoundsAllocation(t *testing.T) {
	const claimed = 24 + 24<<35
	h := make([]byte, 24)
	binary.LittleEndian.PutUint32(h, Magic)
	binary.LittleEndian.PutUint64(h[8:], claimed-24)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadTrace(bytes.NewReader(h), claimed)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want unexpected EOF", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Fatalf("allocated %d bytes for a 24-byte input", d)
	}
}

func TestDetect(t *testing.T) {
	trace := refTrace([8]byte{}, refRecord('R', [3]byte{}, 0, 1, 0))
	cases := []struct {
		name string
		data []byte
		want Mode
	}{
		{"empty", nil, ModeRecord},
		{"trace", trace, ModeReplayTrace},
		{"empty trace", refTrace([8]byte{}), ModeReplayTrace},
		{"corrupt trace is still a trace", trace[:30], ModeReplayTrace},
		{"magic but short", trace[:20], ModeReplayFileList},
		{"file list", []byte("/usr/bin/python3\n/etc/\n"), ModeReplayFileList},
	}
	dir := t.TempDir()
	for _, c := range cases {
		m, err := Detect(bytes.NewReader(c.data), int64(len(c.data)))
		if err != nil || m != c.want {
			t.Errorf("%s: Detect = %v, %v; want %v", c.name, m, err, c.want)
		}
		p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_"))
		if err := os.WriteFile(p, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		if m, err := DetectMode(p); err != nil || m != c.want {
			t.Errorf("%s: DetectMode = %v, %v; want %v", c.name, m, err, c.want)
		}
	}
	if m, err := DetectMode(filepath.Join(dir, "missing")); err != nil || m != ModeDisabled {
		t.Errorf("missing file: %v, %v", m, err)
	}
	if _, err := DetectMode(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}

func TestReadTraceFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "trace")
	os.WriteFile(p, refTrace([8]byte{}, refRecord('R', [3]byte{}, 5, 7, 9)), 0o644)
	recs, err := ReadTraceFile(p)
	if err != nil || len(recs) != 1 || recs[0] != (Record{OpRead, 5, 7, 9}) {
		t.Fatalf("got %v, %v", recs, err)
	}
	os.WriteFile(p, []byte("not a trace at all, just text....."), 0o644)
	if _, err := ReadTraceFile(p); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "magic") {
		t.Fatalf("got %v", err)
	}
}

func equalRecords(a, b []Record) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

type failingReader struct {
	data   []byte
	failAt int64
	err    error
}

func (r failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > r.failAt {
		n := max(0, int(r.failAt-off))
		copy(p, r.data[off:off+int64(n)])
		return n, r.err
	}
	return copy(p, r.data[off:]), nil
}
