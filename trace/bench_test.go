package trace

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/obd-project/obd/crc32c"
)

// BenchmarkRecorderOverhead times 4 KiB reads through a recording wrapper against the
// same reads straight from the layer, in the same run (x-vs-baseline = wrapped / direct).
func BenchmarkRecorderOverhead(b *testing.B) {
	data := make([]byte, 4<<20)
	src := bytes.NewReader(data)
	buf := make([]byte, 4096)
	// 256 distinct, non-contiguous ranges: compaction dedupes them when the cap is hit.
	off := func(i int) int64 { return int64(i%256) * 8192 }
	read := func(r io.ReaderAt) time.Duration {
		start := time.Now()
		for i := range b.N {
			r.ReadAt(buf, off(i))
		}
		return time.Since(start)
	}
	base := read(src)
	rec := NewRecorder(0)
	b.ResetTimer()
	wrapped := read(rec.Layer(0, src))
	b.StopTimer()
	b.ReportMetric(float64(wrapped)/float64(base), "x-vs-baseline")
	b.SetBytes(4096)
}

// BenchmarkReadTrace decodes a 100k-record trace against the baseline of only
// checksumming its bytes (the least any validating reader must do).
func BenchmarkReadTrace(b *testing.B) {
	recs := make([]Record, 100_000)
	for i := range recs {
		recs[i] = Record{OpRead, uint32(i % 5), 4096, int64(i) * 8192}
	}
	var buf bytes.Buffer
	WriteTrace(&buf, recs)
	data := buf.Bytes()
	start := time.Now()
	for range b.N {
		crc32c.Checksum(data[HeaderSize:])
	}
	base := time.Since(start)
	b.ResetTimer()
	start = time.Now()
	for range b.N {
		if _, err := ReadTrace(bytes.NewReader(data), int64(len(data))); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(time.Since(start))/float64(base), "x-vs-baseline")
	b.SetBytes(int64(len(data)))
}

// slowLayer stands for a remote layer: every read costs a fixed latency.
type slowLayer struct{ latency time.Duration }

func (s slowLayer) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(s.latency)
	return len(p), nil
}

// BenchmarkReplayConcurrency replays 64 reads of a 1 ms-latency layer with the
// default 16 workers against reading them one by one (x-vs-baseline < 1 is the
// speed-up the workers buy).
func BenchmarkReplayConcurrency(b *testing.B) {
	recs := make([]Record, 64)
	for i := range recs {
		recs[i] = Record{OpRead, 0, 4096, int64(i) * 4096}
	}
	layer := slowLayer{time.Millisecond}
	buf := make([]byte, 4096)
	start := time.Now()
	for range b.N {
		for _, r := range recs {
			layer.ReadAt(buf, r.Offset)
		}
	}
	base := time.Since(start)
	b.ResetTimer()
	start = time.Now()
	for range b.N {
		if _, err := Replay(context.Background(), recs, []io.ReaderAt{layer}, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(time.Since(start))/float64(base), "x-vs-baseline")
}
