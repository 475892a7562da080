package ublk

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/lsmt"
	"github.com/obd-project/obd/zfile"
	"golang.org/x/sys/unix"
)

// stackedImage builds a local image of three sealed layers (plain LSMT, ZFile
// LZ4 if withZFile else plain, plain LSMT, bottom first) under a writable upper,
// each holding random writes and discards of 512 B to 64 KiB: extents straddle
// layers, holes and zeroed ranges cut 4 KiB blocks, and the ZFile layer's
// ranges are not local.
func stackedImage(t *testing.T, size int64, withZFile bool) *lsmt.Image {
	t.Helper()
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(7, 13))
	writable := func(name string) *lsmt.Writable {
		data, err := os.Create(filepath.Join(dir, name+".data"))
		if err != nil {
			t.Fatal(err)
		}
		index, err := os.Create(filepath.Join(dir, name+".index"))
		if err != nil {
			t.Fatal(err)
		}
		w, err := lsmt.Create(data, index, lsmt.CreateOptions{VirtualSize: uint64(size)})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		for i := 0; i < 200; i++ {
			n := int64(1+r.IntN(len(buf)/512)) * 512
			off := r.Int64N((size-n)/512+1) * 512
			if r.IntN(5) == 0 {
				if err := w.Discard(off, n); err != nil {
					t.Fatal(err)
				}
				continue
			}
			randomBytes(buf[:n], r.Uint64())
			if _, err := w.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
		}
		return w
	}
	var lowers []*lsmt.Layer
	for i, compress := range []bool{false, withZFile, false} {
		w := writable(string(rune('a' + i)))
		path := filepath.Join(dir, string(rune('a'+i))+".layer")
		out, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		var dst io.Writer = out
		var zw *zfile.Writer
		if compress {
			if zw, err = zfile.NewWriter(out, zfile.Options{}); err != nil {
				t.Fatal(err)
			}
			dst = zw
		}
		if err := lsmt.Commit(dst, w.CommitSource(), lsmt.CommitOptions{}); err != nil {
			t.Fatal(err)
		}
		if zw != nil {
			if err := zw.Close(); err != nil {
				t.Fatal(err)
			}
		}
		w.Close()
		st, _ := out.Stat()
		var lr io.ReaderAt = out
		lsize := st.Size()
		if compress {
			z, err := zfile.Open(out, st.Size())
			if err != nil {
				t.Fatal(err)
			}
			lr, lsize = z, z.Size()
		}
		l, err := lsmt.OpenLayer(lr, lsize)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { out.Close() })
		lowers = append(lowers, l)
	}
	upper := writable("upper")
	t.Cleanup(func() { upper.Close() })
	im, err := lsmt.NewImage(lowers, upper)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// checkDevice reads the device in requests of assorted sizes and offsets
// (512 B multiples) and compares each with the image's own ReadAt.
func checkDevice(t *testing.T, fd int, im *lsmt.Image, seed uint64) {
	t.Helper()
	size := im.Size()
	buf := alignedBuf(t, 1<<20)
	want := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(seed, 3))
	for off := int64(0); off < size; off += 1 << 20 {
		preadAll(t, fd, buf, off, 1<<20)
		if _, err := im.ReadAt(want, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, want) {
			t.Fatalf("device and image differ in [%d, +1 MiB) at %d", off, off+int64(firstDiff(buf, want)))
		}
	}
	for i := 0; i < 2000; i++ {
		n := int64(1+r.IntN(256)) * 512 // up to 128 KiB: both sides of ringReadMinCopy
		if r.IntN(4) == 0 {
			n = 4096
		}
		off := r.Int64N((size-n)/512+1) * 512
		preadAll(t, fd, buf[:n], off, int(n))
		if _, err := im.ReadAt(want[:n], off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], want[:n]) {
			t.Fatalf("device and image differ in [%d, +%d) at %d", off, n, off+int64(firstDiff(buf[:n], want[:n])))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

func ringReads(d *Device) uint64 {
	n, _ := d.FileReads()
	return n
}

// zeroCopyKernel: the kernel offers what New needs for zero copy.
func zeroCopyKernel(t *testing.T) bool {
	t.Helper()
	f, err := Features()
	if err != nil {
		t.Fatal(err)
	}
	zc := FeatureAutoBufReg | FeatureUserCopy | FeatureBufRegOffDaemon
	return f&zc == zc
}

// TestImageFileReads serves stacked local images: ranges in plain local layers
// and the upper are read on the queue's ring (counted), ranges touching a ZFile
// layer through ReadAt, and every byte matches the image's, before and after
// writes through the device change the upper. An image wholly in local files
// uses zero copy where the kernel has AUTO_BUF_REG (writes then move by user
// copy); one with a ZFile layer keeps the kernel's copy. The same with the
// worker pool (user copy from other threads) and with each feature turned off.
func TestImageFileReads(t *testing.T) {
	requireUblk(t)
	const size = 16 << 20
	zcKernel := zeroCopyKernel(t)
	for _, withZFile := range []bool{false, true} {
		im := stackedImage(t, size, withZFile)
		for i, opts := range []Options{{}, {AlwaysWorkers: true}, {NoZeroCopy: true}, {NoRingReads: true}} {
			dev := newDevice(t, im, opts)
			fd := openDirect(t, dev.Path(), unix.O_RDWR)
			checkDevice(t, fd, im, uint64(i))
			w := alignedBuf(t, 64<<10)
			r := rand.New(rand.NewPCG(5, uint64(i)))
			for j := 0; j < 100; j++ {
				n := int64(1+r.IntN(16)) * 4096
				randomBytes(w[:n], r.Uint64())
				pwriteAll(t, fd, w[:n], r.Int64N((size-n)/4096+1)*4096, int(n))
			}
			checkDevice(t, fd, im, uint64(i)+10)
			var served uint64
			for _, n := range dev.QueueRequests() {
				served += n
			}
			ring, zc := dev.FileReads()
			linked, reread := dev.LinkedReads()
			t.Logf("zfile=%v %+v: features %s; %d of %d requests read on the ring, %d with zero copy, %d linked to their COMMIT",
				withZFile, opts, FeatureString(dev.Features()), ring, served, zc, linked)
			wantZC := zcKernel && !withZFile && !opts.NoZeroCopy && !opts.NoRingReads
			switch {
			case opts.NoRingReads && ring != 0:
				t.Fatalf("%+v: %d requests read on the ring", opts, ring)
			case !opts.NoRingReads && !withZFile && ring == 0:
				// (With the ZFile layer under most ranges, the large reads that
				// copy mode sends to the ring may all touch it.)
				t.Fatalf("%+v: no request was read on the queue's ring", opts)
			case !opts.NoRingReads && !withZFile && linked == 0:
				t.Fatalf("%+v: no ring read was linked to its COMMIT", opts)
			case reread != 0:
				t.Fatalf("%+v: %d ring reads of healthy files failed", opts, reread)
			case ring >= served:
				t.Fatalf("%+v: all %d requests were read on the ring; writes (and ZFile reads) must use the Target", opts, served)
			case wantZC && (dev.Features()&FeatureAutoBufReg == 0 || zc != ring):
				t.Fatalf("%+v: kernel offers zero copy, device has %s and read %d of %d ring reads zero-copy", opts, FeatureString(dev.Features()), zc, ring)
			case !wantZC && (zc != 0 || dev.Features()&FeatureAutoBufReg != 0):
				t.Fatalf("%+v: %d zero-copy reads, features %s", opts, zc, FeatureString(dev.Features()))
			}
		}
	}
}

// brokenFiles is a Target over a file that ends before the device does (the
// rest reads as zeros), mapped to local files in 4 KiB blocks: every 13th block
// a hole, every 17th mapped to a write-only fd of the same file (its reads on
// the ring fail with EBADF), the rest, merged, to the file itself (those past
// its end come back short). ReadAt always answers right, so every failed or
// short ring read must end up served through it.
type brokenFiles struct {
	f       *os.File
	size    int64
	wrongFd int
}

const brokenBlock = 4096

func (b *brokenFiles) kind(blk int64) int { // 0 data, 1 hole, 2 failing
	switch {
	case blk%13 == 3:
		return 1
	case blk%17 == 5:
		return 2
	}
	return 0
}

func (b *brokenFiles) ReadAt(p []byte, off int64) (int, error) {
	for done := 0; done < len(p); {
		pos := off + int64(done)
		n := min(len(p)-done, int(brokenBlock-pos%brokenBlock))
		if b.kind(pos/brokenBlock) == 1 {
			clear(p[done : done+n])
		} else if got, err := b.f.ReadAt(p[done:done+n], pos); err != nil && err != io.EOF {
			return done, err
		} else {
			clear(p[done+got : done+n]) // past the file's end
		}
		done += n
	}
	return len(p), nil
}

func (b *brokenFiles) MapFile(dst []blockdev.FileExtent, off, n int64) ([]blockdev.FileExtent, bool) {
	for end := off + n; off < end; {
		l := min(end-off, brokenBlock-off%brokenBlock)
		e := blockdev.FileExtent{Fd: int(b.f.Fd()), Offset: off, Length: l}
		switch b.kind(off / brokenBlock) {
		case 1:
			e = blockdev.FileExtent{Fd: -1, Length: l}
		case 2:
			e.Fd = b.wrongFd
		}
		if k := len(dst) - 1; k >= 0 && e.Fd == int(b.f.Fd()) && dst[k].Fd == e.Fd && dst[k].Offset+dst[k].Length == off {
			dst[k].Length += l
		} else {
			dst = append(dst, e)
		}
		off += l
	}
	return dst, true
}

func (b *brokenFiles) WriteAt(p []byte, off int64) (int, error) { return 0, unix.EROFS }
func (b *brokenFiles) Flush() error                             { return nil }
func (b *brokenFiles) Size() int64                              { return b.size }

// ext4Dir mounts a fresh ext4 file system (on a loop device) for the test.
func ext4Dir(t *testing.T) string {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Fatalf("mkfs.ext4 not found (the VM suite passes -b /sbin/mkfs.ext4): %v", err)
	}
	img := filepath.Join(t.TempDir(), "ext4.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	dev := loopDevice(t, img)
	dir := t.TempDir()
	if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, 0) })
	return dir
}

// TestRingReadsRecover serves brokenFiles, its file on tmpfs and on ext4:
// requests of 512 B to 128 KiB (chained to their COMMIT and not, with holes,
// failing pieces and pieces past the end of the file) must read exactly what
// ReadAt answers, each failed or short read on the ring must have been served
// again through ReadAt (counted), and requests must have been read with linked
// commits where the ring can skip CQEs (every kernel with ublk in the suite).
// Without zero copy, requests under ringReadMinCopy go to the ring only on
// ext4 (nowaitFS).
func TestRingReadsRecover(t *testing.T) {
	requireUblk(t)
	for _, fs := range []string{"tmpfs", "ext4"} {
		dir := t.TempDir()
		if fs == "ext4" {
			dir = ext4Dir(t)
		}
		testRingReadsRecover(t, fs, filepath.Join(dir, "data"))
	}
}

func testRingReadsRecover(t *testing.T, fs, path string) {
	const size = 8 << 20
	data := make([]byte, 6<<20+1536) // ends mid-block: short reads, then EOF
	randomBytes(data, 77)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wrong, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(wrong)
	target := &brokenFiles{f: f, size: size, wrongFd: wrong}
	for i, opts := range []Options{{}, {AlwaysWorkers: true}, {InThread: true}, {NoZeroCopy: true}} {
		dev := newDevice(t, target, opts)
		fd := openDirect(t, dev.Path(), unix.O_RDONLY)
		buf := alignedBuf(t, 128<<10)
		want := make([]byte, 128<<10)
		r := rand.New(rand.NewPCG(11, uint64(i)))
		large := 0
		for j := 0; j < 3000; j++ {
			n := int64(1+r.IntN(256)) * 512
			if j%3 == 0 {
				n = 4096
			}
			if n >= ringReadMinCopy {
				large++
			}
			off := r.Int64N((size-n)/512+1) * 512
			if j%5 == 0 { // around the end of the file
				off = min(int64(len(data))&^511-64<<10+r.Int64N(256)*512, size-n)
			}
			preadAll(t, fd, buf[:n], off, int(n))
			target.ReadAt(want[:n], off)
			if !bytes.Equal(buf[:n], want[:n]) {
				t.Fatalf("%+v: device and ReadAt differ in [%d, +%d) at %d", opts, off, n, off+int64(firstDiff(buf[:n], want[:n])))
			}
		}
		ring, zc := dev.FileReads()
		linked, reread := dev.LinkedReads()
		t.Logf("%s %+v: features %s; %d ring reads (%d zero copy; %d requests of >= %d bytes), %d linked, %d served again by ReadAt",
			fs, opts, FeatureString(dev.Features()), ring, zc, large, ringReadMinCopy, linked, reread)
		copyPath := dev.Features()&FeatureAutoBufReg == 0
		switch {
		case copyPath && fs == "tmpfs" && ring > uint64(large)+100: // (+ the kernel's own reads: partition scan, read-ahead)
			t.Fatalf("%s %+v: %d ring reads, but only %d requests are large enough for the ring on tmpfs", fs, opts, ring, large)
		case copyPath && fs == "ext4" && ring < uint64(large)+(3000-uint64(large))/2:
			t.Fatalf("%s %+v: %d ring reads for %d large requests: small ones on ext4 must be read on the ring", fs, opts, ring, large)
		case linked == 0:
			t.Fatalf("%s %+v: no request read with its COMMIT linked", fs, opts)
		case linked == ring:
			t.Fatalf("%s %+v: all %d ring reads linked; requests of more than %d pieces must not be", fs, opts, ring, maxLinkedPieces)
		case reread == 0:
			t.Fatalf("%s %+v: no failed ring read was served again through ReadAt", fs, opts)
		}
	}
}
