package convert

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// A producer far ahead of its reader spills to the file; the reader gets the
// stream back in order, and the file goes when both sides are done.
func TestSpoolSpillsInOrder(t *testing.T) {
	data := make([]byte, 5*spoolChunk+12345)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rnd.Uint32())
	}
	path := filepath.Join(t.TempDir(), "spool")
	s := newSpool(path, sha256Hex(data))
	s.memMax = 2 * spoolChunk
	s.fill(io.NopCloser(bytes.NewReader(data))) // the whole stream before any read
	if st, err := os.Stat(path); err != nil || st.Size() != int64(len(data)-2*spoolChunk) {
		t.Fatalf("spill file: %v %v, want %d bytes", st, err, len(data)-2*spoolChunk)
	}
	got, err := io.ReadAll(io.LimitReader(s, int64(len(data))+1)) // odd read sizes
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (%v), want %d equal bytes", len(got), err, len(data))
	}
	s.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("spill file left behind: %v", err)
	}
}

// The stream's digest is checked: a mismatch is an error after the data, not EOF.
func TestSpoolDigestMismatch(t *testing.T) {
	s := newSpool(filepath.Join(t.TempDir(), "spool"), sha256Hex([]byte("other")))
	go s.fill(io.NopCloser(strings.NewReader("data")))
	got, err := io.ReadAll(s)
	if string(got) != "data" || err == nil || !strings.Contains(err.Error(), "the image config says") {
		t.Fatalf("read %q, %v", got, err)
	}
	s.Close()
}

// A reader that stops early stops the producer, which removes its spill file.
func TestSpoolClosedEarly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool")
	s := newSpool(path, "sha256:unused")
	s.memMax = spoolChunk
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() { s.fill(pr); close(done) }()
	chunk := make([]byte, spoolChunk)
	pw.Write(chunk)
	pw.Write(chunk) // spilled
	if _, err := s.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	go io.Copy(pw, strings.NewReader(strings.Repeat("x", 4*spoolChunk)))
	<-done
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("spill file left behind: %v", err)
	}
	if _, err := pw.Write([]byte("more")); err == nil {
		t.Fatal("the producer still reads its source after the reader closed")
	}
}

// gatedLayer is a source layer whose stream, at its end, waits for open to be
// closed; end is closed when its own stream is read to the end.
type gatedLayer struct {
	v1.Layer
	open <-chan struct{}
	end  chan struct{}
}

func (g *gatedLayer) Compressed() (io.ReadCloser, error) {
	rc, err := g.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	return &gatedReader{rc, g}, nil
}

type gatedReader struct {
	io.ReadCloser
	g *gatedLayer
}

func (r *gatedReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != io.EOF {
		return n, err
	}
	select {
	case <-r.g.end:
	default:
		close(r.g.end)
	}
	if r.g.open != nil {
		select {
		case <-r.g.open:
		case <-time.After(60 * time.Second):
			return n, errors.New("the next layer was not downloaded while this one was being converted")
		}
	}
	return n, io.EOF
}

// Layer i+1 is downloaded and decompressed while layer i is converted: here the
// first layer's stream ends only once the second one has been read in full.
func TestNextLayerFetchedAhead(t *testing.T) {
	var layers []*gatedLayer
	for i := range 2 {
		data := makeTar(t, []entry{fileE(fmt.Sprintf("f%d", i), 0o644, bytes.Repeat([]byte{byte(i)}, 3<<20))})
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, &gatedLayer{Layer: l, end: make(chan struct{})})
	}
	layers[0].open = layers[1].end
	img, err := mutate.AppendLayers(empty.Image, layers[0], layers[1])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ConvertImage(img, ImageOptions{Options: Options{WorkDir: t.TempDir(), VSize: 64 << 20}}); err != nil {
		t.Fatal(err)
	}
}

// stalledLayer is a source layer whose stream blocks in Read (closing reading
// the first time) until release is closed, then ends; closed is closed by Close.
type stalledLayer struct {
	v1.Layer
	reading, release, closed chan struct{}
	once                     sync.Once
}

func (s *stalledLayer) Compressed() (io.ReadCloser, error) { return s, nil }

func (s *stalledLayer) Read([]byte) (int, error) {
	s.once.Do(func() { close(s.reading) })
	<-s.release
	return 0, io.EOF
}

func (s *stalledLayer) Close() error { close(s.closed); return nil }

// A conversion that fails midway returns only once the next layer's producer has
// stopped (and closed its source): nothing of it still writes into WorkDir, which
// the caller removes next (obd convert).
func TestConvertFailureWaitsForProducers(t *testing.T) {
	bad := bytes.Repeat([]byte("not a tar header "), 1024)
	l0, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(bad)), nil })
	if err != nil {
		t.Fatal(err)
	}
	l1, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(makeTar(t, []entry{fileE("f", 0o644, []byte("x"))}))), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stalled := &stalledLayer{Layer: l1, reading: make(chan struct{}), release: make(chan struct{}), closed: make(chan struct{})}
	img, err := mutate.AppendLayers(empty.Image, l0, stalled)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := ConvertImage(img, ImageOptions{Options: Options{WorkDir: t.TempDir(), VSize: 64 << 20}})
		done <- err
	}()
	<-stalled.reading
	select {
	case err := <-done:
		t.Fatalf("ConvertImage returned (%v) while layer 1's producer was still reading its source", err)
	case <-time.After(500 * time.Millisecond): // layer 0 fails at once; the wait is for the regression
	}
	close(stalled.release)
	if err := <-done; err == nil {
		t.Fatal("converting a layer that is not a tar succeeded")
	}
	select {
	case <-stalled.closed:
	default:
		t.Fatal("ConvertImage returned before layer 1's producer closed its source")
	}
}
