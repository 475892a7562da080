package ublk

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/blockdev/blockdevtest"
)

// The test targets hold to the blockdev contract, so what the device tests see is
// the frontend's doing; and so does a target served through the request path
// (backend.serve), READ/WRITE/FLUSH/DISCARD/WRITE_ZEROES as the kernel sends them.
func TestConformance(t *testing.T) {
	const size = 1 << 20
	for _, tc := range []struct {
		name string
		new  func(t *testing.T) blockdev.Target
		caps blockdev.Caps
	}{
		{"mem", func(*testing.T) blockdev.Target { return newMemTarget(size) }, blockdev.Caps{}},
		{"discard", func(*testing.T) blockdev.Target { return discardTarget{newMemTarget(size)} }, blockdev.Caps{Discard: true}},
		{"zeroes", func(*testing.T) blockdev.Target { return zeroTarget{discardTarget{newMemTarget(size)}} },
			blockdev.Caps{Discard: true, WriteZeroes: true}},
		{"readonly", func(*testing.T) blockdev.Target { return roTarget{newMemTarget(size)} }, blockdev.Caps{ReadOnly: true}},
		{"file", func(t *testing.T) blockdev.Target {
			f, err := openFileTarget(filepath.Join(t.TempDir(), "disk"), size)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.f.Close() })
			return f
		}, blockdev.Caps{Discard: true}},
		{"served/discard", func(*testing.T) blockdev.Target {
			return servedTarget{newBackend(discardTarget{newMemTarget(size)})}
		}, blockdev.Caps{Discard: true, WriteZeroes: true}},
		{"served/zeroes", func(*testing.T) blockdev.Target {
			return servedTarget{newBackend(zeroTarget{discardTarget{newMemTarget(size)}})}
		}, blockdev.Caps{Discard: true, WriteZeroes: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blockdevtest.Run(t, tc.new, blockdevtest.Options{Caps: &tc.caps})
		})
	}
}

// servedTarget sends each call through backend.serve as a ublk request.
type servedTarget struct{ b *backend }

func result(res int32, want int) error {
	if res < 0 || int(res) != want {
		return fmt.Errorf("ublk request result %d, want %d", res, want)
	}
	return nil
}

func (s servedTarget) ReadAt(p []byte, off int64) (int, error) {
	if err := result(s.b.serve(desc(opRead, off, int64(len(p))), p), len(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s servedTarget) WriteAt(p []byte, off int64) (int, error) {
	if err := result(s.b.serve(desc(opWrite, off, int64(len(p))), p), len(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s servedTarget) Flush() error { return result(s.b.serve(desc(opFlush, 0, 0), nil), 0) }
func (s servedTarget) Size() int64  { return s.b.size }

func (s servedTarget) Discard(off, n int64) error {
	return result(s.b.serve(desc(opDiscard, off, n), nil), 0)
}

func (s servedTarget) WriteZeroes(off, n int64) error {
	return result(s.b.serve(desc(opWriteZeroes, off, n), nil), 0)
}
