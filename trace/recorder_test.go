package trace

import (
	"bytes"
	"cmp"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
)

func TestRecorderRecordsCompleteReads(t *testing.T) {
	data := make([]byte, 64<<10)
	rec := NewRecorder(0)
	l0 := rec.Layer(0, bytes.NewReader(data))
	l2 := rec.Layer(2, bytes.NewReader(data))
	buf := make([]byte, 4096)
	mustRead(t, l0, buf, 0)
	mustRead(t, l2, buf[:512], 8192)
	mustRead(t, l0, buf, 4096) // contiguous with the first: merged on output
	// A short read at the end and a failed read are not recorded (reference: only
	// n_read == count is).
	if n, err := l0.ReadAt(buf, int64(len(data))-100); n != 100 || err != io.EOF {
		t.Fatalf("short read: %d, %v", n, err)
	}
	if _, err := l0.ReadAt(buf, -1); err == nil {
		t.Fatal("negative offset read succeeded")
	}
	l0.ReadAt(buf[:0], 0) // empty reads carry nothing to prefetch
	// A full read that also reports io.EOF (allowed by io.ReaderAt) is complete.
	if n, _ := l2.ReadAt(buf, int64(len(data))-4096); n != 4096 {
		t.Fatal("tail read")
	}
	if got := rec.Len(); got != 4 {
		t.Fatalf("Len = %d, want 4 raw records", got)
	}
	want := []Record{
		{OpRead, 0, 8192, 0},
		{OpRead, 2, 512, 8192},
		{OpRead, 2, 4096, int64(len(data)) - 4096},
	}
	if got := rec.Records(); !equalRecords(got, want) {
		t.Fatalf("Records = %v, want %v", got, want)
	}
	rec.Stop()
	mustRead(t, l0, buf, 40960)
	if rec.Len() != 4 {
		t.Fatal("recorded after Stop")
	}
}

func TestRecorderSplitsLargeReads(t *testing.T) {
	rec := NewRecorder(0)
	l := rec.Layer(1, bytes.NewReader(make([]byte, 3<<20)))
	mustRead(t, l, make([]byte, 2<<20+512), 4096)
	want := []Record{{OpRead, 1, MaxIOSize, 4096}, {OpRead, 1, MaxIOSize, 4096 + MaxIOSize}, {OpRead, 1, 512, 4096 + 2*MaxIOSize}}
	if got := rec.Records(); !equalRecords(got, want) {
		t.Fatalf("Records = %v, want %v", got, want)
	}
}

func TestRecorderLayerIndexPanicsWhenNegative(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	NewRecorder(0).Layer(-1, bytes.NewReader(nil))
}

// Run with -race: many goroutines read through several wrappers at once; every read
// must be recorded exactly once.
func TestRecorderConcurrent(t *testing.T) {
	const layers, workers, reads = 4, 8, 500
	data := make([]byte, 8<<20)
	rec := NewRecorder(0)
	var wrapped []io.ReaderAt
	for i := range layers {
		wrapped = append(wrapped, rec.Layer(i, bytes.NewReader(data)))
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1024)
			for k := range reads {
				// Distinct, never-contiguous ranges so Compact keeps each one.
				off := int64((w*reads + k) * 2048)
				if _, err := wrapped[k%layers].ReadAt(buf, off); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := rec.Records()
	if len(got) != workers*reads {
		t.Fatalf("%d records, want %d", len(got), workers*reads)
	}
	seen := map[Record]bool{}
	for _, r := range got {
		seen[r] = true
	}
	for w := range workers {
		for k := range reads {
			r := Record{OpRead, uint32(k % layers), 1024, int64((w*reads + k) * 2048)}
			if !seen[r] {
				t.Fatalf("missing %v", r)
			}
		}
	}
}

func TestRecorderBoundedMemory(t *testing.T) {
	data := make([]byte, 1<<20)
	buf := make([]byte, 512)

	// Repeated reads compact away: nothing is lost.
	rec := NewRecorder(8)
	l := rec.Layer(0, bytes.NewReader(data))
	for range 1000 {
		mustRead(t, l, buf, 4096)
	}
	if rec.Len() > 8 || rec.Dropped() != 0 {
		t.Fatalf("Len %d, Dropped %d", rec.Len(), rec.Dropped())
	}
	if got := rec.Records(); !equalRecords(got, []Record{{OpRead, 0, 512, 4096}}) {
		t.Fatalf("Records = %v", got)
	}

	// Distinct ranges beyond the cap are dropped and counted.
	rec = NewRecorder(8)
	l = rec.Layer(0, bytes.NewReader(data))
	for i := range 100 {
		mustRead(t, l, buf, int64(i)*2048)
	}
	if rec.Len() > 8 {
		t.Fatalf("Len %d above the cap", rec.Len())
	}
	if got := rec.Dropped(); got != 100-8 {
		t.Fatalf("Dropped = %d, want 92", got)
	}
	got := rec.Records()
	for i, r := range got {
		if r != (Record{OpRead, 0, 512, int64(i) * 2048}) {
			t.Fatalf("record %d = %v: the first reads must be kept", i, r)
		}
	}
}

func TestCompact(t *testing.T) {
	R := func(layer uint32, off int64, n uint64) Record { return Record{OpRead, layer, n, off} }
	cases := []struct {
		name    string
		in, out []Record
	}{
		{"empty", nil, nil},
		{"duplicates keep first", []Record{R(0, 0, 512), R(1, 0, 512), R(0, 0, 512), R(1, 0, 512)}, []Record{R(0, 0, 512), R(1, 0, 512)}},
		{"contiguous merge", []Record{R(0, 0, 512), R(0, 512, 512), R(0, 1024, 1024)}, []Record{R(0, 0, 2048)}},
		{"interleaved layers merge per layer", []Record{R(0, 0, 512), R(1, 0, 512), R(0, 512, 512), R(1, 512, 512)}, []Record{R(0, 0, 1024), R(1, 0, 1024)}},
		{"backwards not merged", []Record{R(0, 512, 512), R(0, 0, 512)}, []Record{R(0, 512, 512), R(0, 0, 512)}},
		{"gap not merged", []Record{R(0, 0, 512), R(0, 1024, 512)}, []Record{R(0, 0, 512), R(0, 1024, 512)}},
		{"merge capped at 1 MiB", []Record{R(0, 0, MaxIOSize-512), R(0, MaxIOSize-512, 1024)}, []Record{R(0, 0, MaxIOSize-512), R(0, MaxIOSize-512, 1024)}},
		{"merge up to exactly 1 MiB", []Record{R(0, 0, MaxIOSize-512), R(0, MaxIOSize-512, 512)}, []Record{R(0, 0, MaxIOSize)}},
		{"split above 1 MiB", []Record{R(3, 0, 2*MaxIOSize+1)}, []Record{R(3, 0, MaxIOSize), R(3, MaxIOSize, MaxIOSize), R(3, 2*MaxIOSize, 1)}},
		{"zero count dropped", []Record{R(0, 0, 0), R(0, 4096, 0)}, []Record{}},
		{"ops not mixed", []Record{R(0, 0, 512), {OpWrite, 0, 512, 512}}, []Record{R(0, 0, 512), {OpWrite, 0, 512, 512}}},
	}
	for _, c := range cases {
		if got := Compact(c.in); !equalRecords(got, c.out) {
			t.Errorf("%s: Compact = %v, want %v", c.name, got, c.out)
		}
	}
}

// Compact must keep exactly the bytes covered per layer, never produce a record above
// MaxIOSize, and only shrink the list of in-range records.
func TestCompactPreservesCoverage(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	const space = 4 << 20
	for iter := range 100 {
		var in []Record
		for range 1 + rng.Intn(400) {
			off := int64(rng.Intn(space/512)) * 512
			n := uint64(512 * (1 + rng.Intn(8)))
			if rng.Intn(20) == 0 {
				n = uint64(rng.Intn(3 * MaxIOSize))
			}
			if uint64(off)+n > space {
				n = uint64(space - off)
			}
			in = append(in, Record{OpRead, uint32(rng.Intn(3)), n, off})
			if rng.Intn(3) == 0 { // sequential runs and repeats, as real start-ups do
				in = append(in, Record{OpRead, in[len(in)-1].Layer, 512, off + int64(n)})
			}
			if rng.Intn(5) == 0 {
				in = append(in, in[rng.Intn(len(in))])
			}
		}
		out := Compact(in)
		if !equalRecords(coverage(in), coverage(out)) {
			t.Fatalf("iter %d: coverage changed", iter)
		}
		for _, r := range out {
			if r.Count == 0 || r.Count > MaxIOSize {
				t.Fatalf("iter %d: record %v", iter, r)
			}
		}
	}
}

// coverage is the union of the records' ranges per layer, as sorted disjoint
// [start, end) intervals.
func coverage(recs []Record) []Record {
	rs := slices.Clone(recs)
	slices.SortFunc(rs, func(a, b Record) int {
		return cmp.Or(cmp.Compare(a.Layer, b.Layer), cmp.Compare(a.Offset, b.Offset))
	})
	var out []Record
	for _, r := range rs {
		if r.Count == 0 {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Layer == r.Layer && out[n-1].Offset+int64(out[n-1].Count) >= r.Offset {
			end := max(out[n-1].Offset+int64(out[n-1].Count), r.Offset+int64(r.Count))
			out[n-1].Count = uint64(end - out[n-1].Offset)
			continue
		}
		out = append(out, Record{OpRead, r.Layer, r.Count, r.Offset})
	}
	return out
}

func TestDumpWritesAtomically(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "trace")
	if err := os.WriteFile(p, nil, 0o640); err != nil { // the empty file that asked for recording
		t.Fatal(err)
	}
	rec := NewRecorder(0)
	l := rec.Layer(1, bytes.NewReader(make([]byte, 1<<16)))
	mustRead(t, l, make([]byte, 4096), 8192)
	if err := rec.Dump(p); err != nil {
		t.Fatal(err)
	}
	got, err := ReadTraceFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !equalRecords(got, []Record{{OpRead, 1, 4096, 8192}}) {
		t.Fatalf("dumped %v", got)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the original 0640", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		t.Fatalf("directory holds %v, want only the trace", names)
	}
	// A dump that cannot be renamed into place leaves no temporary behind.
	bad := filepath.Join(dir, "sub")
	os.Mkdir(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "x"), nil, 0o644)
	if err := rec.Dump(bad); err == nil {
		t.Fatal("dump over a non-empty directory succeeded")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("%d entries after a failed dump, want 2", len(ents))
	}
}

func mustRead(t *testing.T, r io.ReaderAt, p []byte, off int64) {
	t.Helper()
	if n, err := r.ReadAt(p, off); n != len(p) || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("ReadAt(%d, %d) = %d, %v", len(p), off, n, err)
	}
}
