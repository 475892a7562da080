package lsmt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// crashPage is the unit at which a simulated power loss keeps or drops unsynced data.
const crashPage = 4096

// powerLoss writes to dst what a file could hold after a power loss: synced is its
// content when the last fsync returned, current its content at the crash. The size is
// anything from the synced size up to the current one (in pages); each page that
// changed since the sync keeps its synced or its current bytes at random. All-zero
// pages stay holes, as the file system would leave them.
func powerLoss(t *testing.T, r *rand.Rand, synced, current []byte, dst string) {
	t.Helper()
	size := len(current)
	if len(current) > len(synced) && r.IntN(3) > 0 {
		pages := (len(current) - len(synced) + crashPage - 1) / crashPage
		size = min(len(synced)+r.IntN(pages+1)*crashPage, len(current))
	}
	out := make([]byte, size)
	for p := 0; p < size; p += crashPage {
		e := min(p+crashPage, size)
		old := make([]byte, e-p)
		if p < len(synced) {
			copy(old, synced[p:min(e, len(synced))])
		}
		if bytes.Equal(old, current[p:e]) || r.IntN(2) == 0 {
			copy(out[p:e], old)
		} else {
			copy(out[p:e], current[p:e])
		}
	}
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, crashPage)
	for p := 0; p < size; p += crashPage {
		e := min(p+crashPage, size)
		if !bytes.Equal(out[p:e], zero[:e-p]) {
			if _, err := f.WriteAt(out[p:e], int64(p)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// sectorPattern is what write id puts into a sector: (id, sector) repeated, so a read
// tells exactly which write a sector's bytes come from.
func sectorPattern(id int, sector int64, p []byte) {
	for i := 0; i < SectorSize; i += 16 {
		binary.LittleEndian.PutUint64(p[i:], uint64(id))
		binary.LittleEndian.PutUint64(p[i+8:], uint64(sector))
	}
}

// Power loss at a random moment of a random workload with FLUSHes (Sync) in between:
// the layer opens, every sector that no write touched since the last FLUSH reads what
// that FLUSH made durable, and a sector written since reads its flushed content, one
// of the later writes, or zeros (a record that reached the disk without its data, or
// a discard). Several seeds, append-only and sparse layers.
func TestPowerLossKeepsFlushedWrites(t *testing.T) {
	const vsize = 1 << 20
	const sectors = vsize / SectorSize
	for _, sparse := range []bool{false, true} {
		for seed := uint64(1); seed <= 12; seed++ {
			dir := t.TempDir()
			r := rand.New(rand.NewPCG(seed, 3))
			w := newWritableFiles(t, dir, "rw", CreateOptions{VirtualSize: vsize, Sparse: sparse})
			files := []string{"rw.data"}
			if !sparse {
				files = append(files, "rw.index")
			}
			snapshot := func() [][]byte {
				var out [][]byte
				for _, f := range files {
					b, err := os.ReadFile(filepath.Join(dir, f))
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, b)
				}
				return out
			}
			flushed := make([]int, sectors)        // write id each sector held at the last Sync (0: zeros)
			current := make([]int, sectors)        // write id now (-1: discarded)
			later := make([]map[int]bool, sectors) // ids written since the last Sync
			synced := snapshot()
			ops := 40 + r.IntN(160)
			for id := 1; id <= ops; id++ {
				n := 1 + r.IntN(64)
				off := r.IntN(sectors - n + 1)
				switch k := r.IntN(10); {
				case k == 0:
					if err := w.Sync(); err != nil {
						t.Fatal(err)
					}
					synced = snapshot()
					copy(flushed, current)
					clear(later)
				case k <= 2:
					if err := w.Discard(int64(off)*SectorSize, int64(n)*SectorSize); err != nil {
						t.Fatal(err)
					}
					for s := off; s < off+n; s++ {
						current[s] = -1
					}
				default:
					p := make([]byte, n*SectorSize)
					for s := 0; s < n; s++ {
						sectorPattern(id, int64(off+s), p[s*SectorSize:])
					}
					if _, err := w.WriteAt(p, int64(off)*SectorSize); err != nil {
						t.Fatal(err)
					}
					for s := off; s < off+n; s++ {
						current[s] = id
						if later[s] == nil {
							later[s] = map[int]bool{}
						}
						later[s][id] = true
					}
				}
			}
			now := snapshot()
			crash := filepath.Join(t.TempDir(), "crash")
			for i, f := range files {
				powerLoss(t, r, synced[i], now[i], filepath.Join(crash+f))
			}
			w.Close()

			data, _ := os.OpenFile(crash+"rw.data", os.O_RDWR, 0)
			var index *os.File
			if !sparse {
				index, _ = os.OpenFile(crash+"rw.index", os.O_RDWR, 0)
			}
			w2, err := OpenWritable(data, index)
			if err != nil {
				t.Fatalf("sparse=%v seed %d: the layer does not open after a power loss: %v", sparse, seed, err)
			}
			buf := make([]byte, SectorSize)
			want := make([]byte, SectorSize)
			zero := make([]byte, SectorSize)
			matches := func(id, s int) bool {
				if id <= 0 {
					return bytes.Equal(buf, zero)
				}
				sectorPattern(id, int64(s), want)
				return bytes.Equal(buf, want)
			}
			for s := 0; s < sectors; s++ {
				if _, err := w2.ReadAt(buf, int64(s)*SectorSize); err != nil {
					t.Fatal(err)
				}
				ok := matches(flushed[s], s)
				if !ok && (later[s] != nil || current[s] != flushed[s]) {
					ok = bytes.Equal(buf, zero)
					for id := range later[s] {
						ok = ok || matches(id, s)
					}
				}
				if !ok {
					t.Fatalf("sparse=%v seed %d: sector %d reads id %d, flushed id %d, later %v", sparse, seed, s,
						binary.LittleEndian.Uint64(buf), flushed[s], later[s])
				}
			}
			// The layer keeps working: a write after the recovery survives a clean reopen,
			// and no dropped record comes back over the data appended after it.
			p := bytes.Repeat([]byte{0xEE}, 8*SectorSize)
			if _, err := w2.WriteAt(p, 0); err != nil {
				t.Fatal(err)
			}
			snap := make([]byte, vsize)
			if _, err := w2.ReadAt(snap, 0); err != nil {
				t.Fatal(err)
			}
			w2 = reopenWritable(t, filepath.Dir(crash), filepath.Base(crash)+"rw", w2)
			again := make([]byte, vsize)
			if _, err := w2.ReadAt(again, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(snap, again) {
				t.Fatalf("sparse=%v seed %d: the recovered layer reads differently after a clean reopen (at %d)", sparse, seed, firstDiff(snap, again))
			}
			w2.Close()
		}
	}
}

// The audit's case: the record of an unflushed write reached the disk, its data did
// not. The record is dropped (and reported), the flushed write reads back.
func TestUnflushedRecordWithoutDataIsDropped(t *testing.T) {
	dir := t.TempDir()
	w := newWritableFiles(t, dir, "rw", CreateOptions{VirtualSize: 1 << 20})
	if _, err := w.WriteAt(bytes.Repeat([]byte{0xA1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(filepath.Join(dir, "rw.data"))
	if _, err := w.WriteAt(bytes.Repeat([]byte{0xB2}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := os.Truncate(filepath.Join(dir, "rw.data"), st.Size()); err != nil {
		t.Fatal(err)
	}
	data, _ := os.OpenFile(filepath.Join(dir, "rw.data"), os.O_RDWR, 0)
	index, _ := os.OpenFile(filepath.Join(dir, "rw.index"), os.O_RDWR, 0)
	w2, err := OpenWritable(data, index)
	if err != nil {
		t.Fatalf("reopen after power loss: %v", err)
	}
	defer w2.Close()
	if d := w2.Dropped(); d.Records != 1 || d.FirstAt != HeaderSize+SegmentSize || d.First.Offset != 0 {
		t.Errorf("dropped: %+v", d)
	}
	buf := make([]byte, 4096)
	if _, err := w2.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{0xA1}, 4096)) {
		t.Fatalf("flushed data lost: %#x %v", buf[0], err)
	}
}

// The index log's limit is enforced when writing, with a clear error, so a layer
// never grows into one that OpenWritable refuses.
func TestIndexLogLimitAtWriteTime(t *testing.T) {
	defer func(old int64) { maxIndexRecords = old }(maxIndexRecords)
	maxIndexRecords = 20
	dir := t.TempDir()
	w := newWritableFiles(t, dir, "rw", CreateOptions{VirtualSize: 64 << 20})
	p := bytes.Repeat([]byte{7}, 4096)
	var err error
	writes := 0
	for ; writes < 30 && err == nil; writes++ {
		_, err = w.WriteAt(p, int64(writes)*4096)
	}
	if err == nil || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "limit of 20") {
		t.Fatalf("write past the limit: %v", err)
	}
	if writes != 21 {
		t.Errorf("the limit was hit at write %d, want 21", writes)
	}
	// A write of two 4 MiB pieces needs two records; a discard needs one per 16383 sectors.
	if _, err := w.WriteAt(make([]byte, 8<<20), 0); err == nil {
		t.Error("split write accepted with a full log")
	}
	if err := w.Discard(0, 4096); err == nil {
		t.Error("discard accepted with a full log")
	}
	w = reopenWritable(t, dir, "rw", w)
	defer w.Close()
	buf := make([]byte, 4096)
	for i := 0; i < 20; i++ {
		if _, err := w.ReadAt(buf, int64(i)*4096); err != nil || !bytes.Equal(buf, p) {
			t.Fatalf("block %d after reopen: %v", i, err)
		}
	}
}
