package remote

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/obd-project/obd/cache"
	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/registry/registrytest"
	"go.uber.org/zap"
)

// BenchmarkPullHighRTT pulls a generated image (OBD_BENCH_IMAGE_MIB, default 256
// MiB) from a registry 50 ms away (OBD_BENCH_RTT) behind a 100 MiB/s link
// (OBD_BENCH_CAP_MIBPS), digest check included, into a fresh cache (in
// OBD_BENCH_CACHE_DIR if set). It reports the pull's throughput as a fraction of
// the cap, and of the link's practical ceiling on this machine measured in the
// same run: 8 parallel plain 16 MiB range GETs through the same link, no cache.
func BenchmarkPullHighRTT(b *testing.B) {
	capBW := float64(100 << 20)
	if v, err := strconv.Atoi(os.Getenv("OBD_BENCH_CAP_MIBPS")); err == nil && v > 0 {
		capBW = float64(v << 20)
	}
	rtt := 50 * time.Millisecond
	if v, err := time.ParseDuration(os.Getenv("OBD_BENCH_RTT")); err == nil {
		rtt = v
	}
	reg := registrytest.New(b)
	data, l := benchImage(b, reg)
	sh := newShaper(b, reg.URL, rtt, capBW)
	ref := sh.URL[len("http://"):] + "/bench:v1"
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	var total, raw time.Duration
	for i := 0; i < b.N; i++ {
		raw += rawRangeGets(b, sh.URL+"/v2/bench/blobs/"+l.Digest, int64(len(data)))
		cd := b.TempDir()
		if d := os.Getenv("OBD_BENCH_CACHE_DIR"); d != "" {
			cd, _ = os.MkdirTemp(d, "pull")
			defer os.RemoveAll(cd)
		}
		op := newOpener(b, cd, cache.Options{})
		start := time.Now()
		res, err := op.Pull(context.Background(), ref, PullOptions{})
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		if res.Fetched != int64(len(data)) {
			b.Fatalf("fetched %d of %d", res.Fetched, len(data))
		}
		op.Close()
	}
	b.StopTimer()
	b.ReportMetric(float64(len(data))*float64(b.N)/total.Seconds()/capBW, "fraction-of-cap")
	b.ReportMetric(float64(len(data))*float64(b.N)/raw.Seconds()/capBW, "raw-fraction-of-cap")
	b.ReportMetric(raw.Seconds()/total.Seconds(), "fraction-of-raw")
}

// rawRangeGets reads [0, size) of u in 16 MiB range GETs, 8 at a time, and
// returns how long it took.
func rawRangeGets(b *testing.B, u string, size int64) time.Duration {
	const chunk = 16 << 20
	start := time.Now()
	work := make(chan int64)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := range work {
				req, _ := http.NewRequest(http.MethodGet, u, nil)
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, min(off+chunk, size)-1))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Error(err)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	for off := int64(0); off < size; off += chunk {
		work <- off
	}
	close(work)
	wg.Wait()
	return time.Since(start)
}

// BenchmarkStartupTrace times a container-like start-up (reads of the first 16
// MiB of the real two-layer ext4 stack, superblock to /hello, in order by one
// reader) from a registry 50 ms away behind a 100 MiB/s link, with the cache's
// read-ahead off so that reads are as lazy as a random-access start-up's: on a
// cold cache (lazy), on a cold cache after replaying a trace recorded by an
// earlier start-up (replayed: the reads after the replay finished), and from
// local files (the baseline, measured in the same run). It reports lazy/local
// and replayed/local for the start-up reads, the attach (open) times, and the
// replay's duration.
func BenchmarkStartupTrace(b *testing.B) {
	blobs := stackBlobs(b)
	rs := regions(b, truth(b, blobs))
	rs = rs[:16]
	reg := registrytest.New(b)
	cfgAt := pushStack(b, reg, "stack", blobs)
	sh := newShaper(b, reg.URL, 50*time.Millisecond, 100<<20)
	dir := b.TempDir()
	local := &config.ImageConfig{}
	for i, bl := range blobs {
		p := filepath.Join(dir, "layer"+string(rune('0'+i)))
		if err := os.WriteFile(p, bl, 0o644); err != nil {
			b.Fatal(err)
		}
		local.Lowers = append(local.Lowers, config.Layer{File: p})
	}
	co := cache.Options{ReadAhead: -1, RefillSize: 64 << 10}
	// startup returns the open time, the replay time (from open) and the reads' time.
	startup := func(opts image.Options, cfg *config.ImageConfig, waitReplay bool) (open, replay, reads time.Duration) {
		t0 := time.Now()
		im, err := image.Open(context.Background(), cfg, opts)
		if err != nil {
			b.Fatal(err)
		}
		defer im.Close()
		open = time.Since(t0)
		if waitReplay {
			<-im.TraceDone()
			replay = time.Since(t0)
		}
		start := time.Now()
		if failed, err := readRegions(b, im, rs, 1); failed > 0 {
			b.Fatal(err)
		}
		return open, replay, time.Since(start)
	}
	tr := filepath.Join(dir, "startup.trace")
	op := newOpener(b, b.TempDir(), co)
	startup(image.Options{Remote: op, Logger: zap.NewNop(), RecordTrace: tr}, cfgAt(sh.URL), false)
	op.Close()
	if st, err := os.Stat(tr); err != nil || st.Size() <= 24 {
		b.Fatalf("no trace recorded: %v", err)
	}
	b.ResetTimer()
	var tLocal, tLazy, tReplayed, tReplay, oLocal, oRemote time.Duration
	for i := 0; i < b.N; i++ {
		o, _, d := startup(image.Options{Logger: zap.NewNop()}, local, false)
		tLocal += d
		oLocal += o
		op := newOpener(b, b.TempDir(), co)
		o, _, d = startup(image.Options{Remote: op, Logger: zap.NewNop()}, cfgAt(sh.URL), false)
		tLazy += d
		oRemote += o
		op.Close()
		op = newOpener(b, b.TempDir(), co)
		_, r, d := startup(image.Options{Remote: op, Logger: zap.NewNop(), ReplayTrace: tr, PrefetchConcurrency: 16}, cfgAt(sh.URL), true)
		tReplayed += d
		tReplay += r
		op.Close()
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) / 1000 }
	b.ReportMetric(ms(tLocal), "local-ms")
	b.ReportMetric(ms(tLazy), "lazy-ms")
	b.ReportMetric(ms(tReplayed), "replayed-ms")
	b.ReportMetric(float64(tLazy)/float64(tLocal), "lazy/local")
	b.ReportMetric(float64(tReplayed)/float64(tLocal), "replayed/local")
	b.ReportMetric(ms(tReplay), "open+replay-ms")
	b.ReportMetric(ms(oLocal), "open-local-ms")
	b.ReportMetric(ms(oRemote), "open-remote-ms")
}
