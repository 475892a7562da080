package convert

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/registry/registrytest"
)

// benchTar writes a layer of about total bytes: 85% in files of 1-64 KiB spread
// over directories, the rest in a few large files.
func benchTar(tb testing.TB, total int64, seed uint64) []byte {
	rnd := rand.New(rand.NewPCG(seed, 1))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(rnd.Uint32() % 16) // compressible, like real binaries
	}
	write := func(name string, n int64) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: n, ModTime: time.Unix(1, 0)}); err != nil {
			tb.Fatal(err)
		}
		for n > 0 {
			k := min(n, int64(len(chunk)))
			off := rnd.IntN(len(chunk) - int(k) + 1)
			tw.Write(chunk[off : off+int(k)])
			n -= k
		}
	}
	var done int64
	for d := 0; done < total*85/100; d++ {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%03d/", d), Mode: 0o755, ModTime: time.Unix(1, 0)})
		for f := 0; f < 100 && done < total*85/100; f++ {
			n := int64(1024 + rnd.IntN(63*1024))
			write(fmt.Sprintf("d%03d/f%03d", d, f), n)
			done += n
		}
	}
	for i := 0; done < total; i++ {
		n := min(total-done, 32<<20)
		write(fmt.Sprintf("big/%d", i), n)
		done += n
	}
	tw.Close()
	return buf.Bytes()
}

// BenchmarkConvertThroughput: MB/s of uncompressed layer data applied and committed
// (OBD_BENCH_MB sets the layer size, default 256).
func BenchmarkConvertThroughput(b *testing.B) {
	mb := int64(256)
	if s := os.Getenv("OBD_BENCH_MB"); s != "" {
		mb, _ = strconv.ParseInt(s, 10, 64)
	}
	data := benchTar(b, mb<<20, 1)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		bl, err := NewBuilder(Options{WorkDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := bl.AddLayer(bytes.NewReader(data), ""); err != nil {
			b.Fatal(err)
		}
		bl.Close()
	}
}

// BenchmarkApplyDir10000: a layer with a 10,000-entry directory, applied and committed.
func BenchmarkApplyDir10000(b *testing.B) {
	var es []entry
	es = append(es, dirE("big/", 0o755, 1))
	for i := range 10000 {
		es = append(es, fileE(fmt.Sprintf("big/file-%05d", i), 0o644, []byte("x")))
	}
	data := makeTar(b, es)
	b.ResetTimer()
	for range b.N {
		bl, err := NewBuilder(Options{WorkDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := bl.AddLayer(bytes.NewReader(data), ""); err != nil {
			b.Fatal(err)
		}
		bl.Close()
	}
}

// BenchmarkConvertRegistry: a two-layer gzip image of OBD_BENCH_MB (default 256)
// MiB of uncompressed layer data, pulled from a loopback registry and converted; MB/s
// of uncompressed layer data. OBD_BENCH_CPUPROFILE=FILE writes a CPU profile of
// the conversions alone.
func BenchmarkConvertRegistry(b *testing.B) {
	ref, total := benchRegistryImage(b)
	c, err := registry.NewClient(registry.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.SetBytes(total)
	if path := os.Getenv("OBD_BENCH_CPUPROFILE"); path != "" {
		// -cpuprofile would be dominated by the setup's gzip.
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	b.ResetTimer()
	for range b.N {
		src, err := remote.Image(ref, c.RemoteOptions(ctx)...)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ConvertImage(src, ImageOptions{Options: Options{WorkDir: b.TempDir()}}); err != nil {
			b.Fatal(err)
		}
	}
}

// benchRegistryImage pushes the benchmark image to a loopback registry: two gzip
// layers of OBD_BENCH_MB (default 256) MiB of uncompressed data in all. It returns
// the image's reference and its uncompressed layer bytes.
func benchRegistryImage(b *testing.B) (name.Reference, int64) {
	mb := int64(256)
	if s := os.Getenv("OBD_BENCH_MB"); s != "" {
		mb, _ = strconv.ParseInt(s, 10, 64)
	}
	reg := registrytest.New(b)
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	var total int64
	for i := range 2 {
		data := benchTar(b, mb<<20/2, uint64(i+1))
		total += int64(len(data))
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
			tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(1))
		if err != nil {
			b.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			b.Fatal(err)
		}
	}
	reg.PushImage(b, "bench/src", "v1", img)
	ref, err := name.ParseReference(reg.Ref("bench/src:v1"), name.Insecure)
	if err != nil {
		b.Fatal(err)
	}
	return ref, total
}
