package fuseblk

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/obd-project/obd/blockdev"
)

// These tests call the node methods directly (no kernel, no root) to reach paths
// the kernel serialises or never sends.

func newDeviceFile(t blockdev.Target) *deviceFile {
	return &deviceFile{t: t, size: t.Size(), readOnly: blockdev.IsReadOnly(t), mtime: time.Unix(1, 0)}
}

// TestConcurrentPartialWrites: byte-sized writes into one sector from many
// goroutines must not lose each other's bytes (read-modify-write is serialised).
func TestConcurrentPartialWrites(t *testing.T) {
	tgt := newMemTarget(4096)
	f := newDeviceFile(tgt)
	var wg sync.WaitGroup
	for i := range 512 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if n, errno := f.Write(context.Background(), nil, []byte{byte(i) | 1}, 1024+int64(i)); errno != 0 || n != 1 {
				t.Errorf("write %d: %d, %v", i, n, errno)
			}
		}()
		if i%64 == 0 { // aligned writes of neighbouring sectors in between
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, errno := f.Write(context.Background(), nil, bytes.Repeat([]byte{7}, 512), 512); errno != 0 {
					t.Error(errno)
				}
			}()
		}
	}
	wg.Wait()
	got := tgt.bytes(1024, 512)
	for i, b := range got {
		if b != byte(i)|1 {
			t.Fatalf("byte %d = %d, want %d (lost update)", i, b, byte(i)|1)
		}
	}
	if !bytes.Equal(tgt.bytes(512, 512), bytes.Repeat([]byte{7}, 512)) {
		t.Fatal("aligned neighbour sector corrupted")
	}
}

func TestDeviceFileEdges(t *testing.T) {
	ctx := context.Background()
	tgt := newMemTarget(8192)
	f := newDeviceFile(tgt)
	buf := make([]byte, 4096)

	// Reads are clamped at the end; an unaligned tail read works.
	res, errno := f.Read(ctx, nil, buf, 8192-100)
	if errno != 0 || res.Size() != 100 {
		t.Fatalf("tail read: size %d, %v", res.Size(), errno)
	}
	if res, errno := f.Read(ctx, nil, buf, 9000); errno != 0 || res.Size() != 0 {
		t.Fatalf("read past end: %v", errno)
	}
	// A write crossing the end is cut short; one starting at the end fails.
	if n, errno := f.Write(ctx, nil, make([]byte, 1000), 8192-512); errno != 0 || n != 512 {
		t.Fatalf("write across end: %d, %v", n, errno)
	}
	if _, errno := f.Write(ctx, nil, []byte{1}, 8192); errno != syscall.ENOSPC {
		t.Fatalf("write at end: %v", errno)
	}
	// Allocate modes.
	if errno := f.Allocate(ctx, nil, 0, 512, unix.FALLOC_FL_PUNCH_HOLE); errno != syscall.EINVAL {
		t.Fatalf("punch without KEEP_SIZE: %v", errno)
	}
	if errno := f.Allocate(ctx, nil, 0, 512, unix.FALLOC_FL_COLLAPSE_RANGE); errno != syscall.EOPNOTSUPP {
		t.Fatalf("collapse: %v", errno)
	}
	if errno := f.Allocate(ctx, nil, 4096, 1<<20, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE); errno != 0 ||
		tgt.discardBytes.Load() != 4096 {
		t.Fatalf("punch past end (clamped): %v, %d bytes", errno, tgt.discardBytes.Load())
	}
	if errno := f.Allocate(ctx, nil, 10, 20, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE); errno != 0 {
		t.Fatalf("punch inside one sector: %v", errno)
	}
	// Attributes.
	var out fuse.AttrOut
	f.Getattr(ctx, nil, &out)
	if out.Size != 8192 || out.Mode != syscall.S_IFREG|0o600 || out.Blocks != 16 {
		t.Fatalf("attr %+v", out.Attr)
	}
	var in fuse.SetAttrIn
	in.Valid, in.Size = fuse.FATTR_SIZE, 8192
	if errno := f.Setattr(ctx, nil, &in, &out); errno != 0 {
		t.Fatalf("setattr to the same size: %v", errno)
	}
	in.Size = 4096
	if errno := f.Setattr(ctx, nil, &in, &out); errno != syscall.EPERM {
		t.Fatalf("resize: %v", errno)
	}
	if _, flags, errno := f.Open(ctx, syscall.O_RDWR); errno != 0 || flags&fuse.FOPEN_DIRECT_IO != 0 {
		t.Fatalf("open: flags %#x, %v", flags, errno)
	}
}

func TestDeviceFileReadOnlyTarget(t *testing.T) {
	ctx := context.Background()
	tgt := newMemTarget(4096)
	tgt.readOnly = true
	f := newDeviceFile(tgt)
	if _, _, errno := f.Open(ctx, syscall.O_WRONLY); errno != syscall.EROFS {
		t.Fatalf("open: %v", errno)
	}
	if _, errno := f.Write(ctx, nil, make([]byte, 512), 0); errno != syscall.EROFS {
		t.Fatalf("write: %v", errno)
	}
	if errno := f.Allocate(ctx, nil, 0, 512, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE); errno != syscall.EROFS {
		t.Fatalf("punch: %v", errno)
	}
	var out fuse.AttrOut
	f.Getattr(ctx, nil, &out)
	if out.Mode != syscall.S_IFREG|0o400 {
		t.Fatalf("mode %o", out.Mode)
	}
	// A Target that rejects writes without declaring ReadOnly still maps to EROFS.
	tgt.readOnly = true
	f.readOnly = false
	if _, errno := f.Write(ctx, nil, make([]byte, 512), 0); errno != syscall.EROFS {
		t.Fatalf("write to undeclared read-only target: %v", errno)
	}
}

// failingTarget fails every write-side call.
type failingTarget struct{ *memTarget }

var errBroken = errors.New("broken")

func (f failingTarget) WriteAt([]byte, int64) (int, error) { return 0, errBroken }
func (f failingTarget) Flush() error                       { return errBroken }
func (f failingTarget) Discard(int64, int64) error         { return errBroken }

func TestDeviceFileErrorsAreEIO(t *testing.T) {
	ctx := context.Background()
	var ops []string
	f := newDeviceFile(failingTarget{newMemTarget(4096)})
	f.onError = func(op string, off, n int64, err error) {
		if !errors.Is(err, errBroken) {
			t.Errorf("%s: reported %v", op, err)
		}
		ops = append(ops, op)
	}
	if _, errno := f.Write(ctx, nil, make([]byte, 512), 0); errno != syscall.EIO {
		t.Fatalf("write: %v", errno)
	}
	if errno := f.Fsync(ctx, nil, 0); errno != syscall.EIO {
		t.Fatalf("fsync: %v", errno)
	}
	if errno := f.Allocate(ctx, nil, 0, 512, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE); errno != syscall.EIO {
		t.Fatalf("punch: %v", errno)
	}
	if want := []string{"write", "flush", "discard"}; len(ops) != 3 || ops[0] != want[0] || ops[1] != want[1] || ops[2] != want[2] {
		t.Fatalf("reported ops %q, want %q", ops, want)
	}
	// A short read without an error is an error too, never zero-filled data.
	short := newDeviceFile(shortReader{newMemTarget(4096)})
	if _, errno := short.Read(ctx, nil, make([]byte, 512), 0); errno != syscall.EIO {
		t.Fatalf("short read: %v", errno)
	}
}

type shortReader struct{ *memTarget }

func (s shortReader) ReadAt(p []byte, off int64) (int, error) { return len(p) / 2, nil }
