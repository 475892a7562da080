package lsmt

import (
	"errors"
	"io"
	"testing"

	"github.com/obd-project/obd/blockdev"
	"golang.org/x/sys/unix"
)

// mappedReader reads a FileMapper the way a frontend does: pread of each file
// extent (zeros past the end of its file), zeros for the others.
type mappedReader struct {
	tb testing.TB
	m  blockdev.FileMapper
}

var errUnmapped = errors.New("range not mapped to local files")

func (r mappedReader) ReadAt(p []byte, off int64) (int, error) {
	ext, ok := r.m.MapFile(nil, off, int64(len(p)))
	if !ok {
		return 0, errUnmapped
	}
	pos := 0
	for _, e := range ext {
		dst := p[pos : pos+int(e.Length)]
		if e.Fd < 0 {
			clear(dst)
		} else {
			n, err := unix.Pread(e.Fd, dst, e.Offset)
			if err != nil {
				return 0, err
			}
			clear(dst[n:])
		}
		pos += int(e.Length)
	}
	if pos != len(p) {
		r.tb.Fatalf("MapFile(%d, %d): extents cover %d bytes", off, len(p), pos)
	}
	return len(p), nil
}

// TestMapFileMatchesReadAt: the extents MapFile gives for a stack of local layers
// under a writable upper (data straddling layers, holes, discards, unaligned
// ranges) read back exactly the image's bytes.
func TestMapFileMatchesReadAt(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		st := newRandomStack(t, 3, 8<<20, 300, seed)
		checkReads(t, "image+upper", mappedReader{t, st.image(t, true)}, st.model)
		upper := make([]byte, len(st.model))
		if _, err := st.upper.ReadAt(upper, 0); err != nil {
			t.Fatal(err)
		}
		checkReads(t, "upper alone", mappedReader{t, st.upper}, upper)
	}
	st := newRandomStack(t, 3, 8<<20, 300, 4)
	im := st.image(t, false)
	lower := make([]byte, len(st.model))
	if _, err := im.ReadAt(lower, 0); err != nil {
		t.Fatal(err)
	}
	checkReads(t, "lowers", mappedReader{t, im}, lower)
}

// TestMapFileRefusesNonLocal: a layer read through anything but a plain file
// (ZFile, a remote blob) is not mapped, nor is a range past the end.
func TestMapFileRefusesNonLocal(t *testing.T) {
	st := newRandomStack(t, 2, 1<<20, 50, 5)
	l := st.lowers[0]
	wrapped, err := OpenLayer(struct{ io.ReaderAt }{l.ReaderAt()}, l.FileSize())
	if err != nil {
		t.Fatal(err)
	}
	im, err := NewImage([]*Layer{wrapped}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := im.MapFile(nil, 0, 1<<20); ok {
		t.Fatal("MapFile mapped a layer that is not a plain file")
	}
	if _, ok := st.image(t, false).MapFile(nil, 1<<20-512, 1024); ok {
		t.Fatal("MapFile mapped a range past the end")
	}
	if _, ok := st.image(t, false).MapFile(nil, 0, 1<<20); !ok {
		t.Fatal("MapFile refused a local layer")
	}
}
