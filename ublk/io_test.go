package ublk

import (
	"bytes"
	"strings"
	"testing"

	"github.com/obd-project/obd/blockdev"
)

func desc(op uint32, off, n int64) ioDesc {
	return ioDesc{OpFlags: op, StartSector: uint64(off >> 9), NrSectors: uint32(n >> 9)}
}

func TestServeReadWrite(t *testing.T) {
	m := newMemTarget(1 << 20)
	b := newBackend(m)
	buf := make([]byte, 64<<10)
	copy(buf, bytes.Repeat([]byte("obd!"), 2048))
	if res := b.serve(desc(opWrite, 4096, 8192), buf); res != 8192 {
		t.Fatalf("WRITE result %d, want 8192", res)
	}
	if !bytes.Equal(m.snapshot(4096, 8192), buf[:8192]) {
		t.Fatal("WRITE did not reach the target")
	}
	if m.flushes.Load() != 0 {
		t.Fatal("plain WRITE flushed")
	}
	out := make([]byte, 64<<10)
	if res := b.serve(desc(opRead, 4096, 8192), out); res != 8192 || !bytes.Equal(out[:8192], buf[:8192]) {
		t.Fatalf("READ result %d / data mismatch", res)
	}
	if res := b.serve(desc(opWrite|ioFlagFUA, 0, 512), buf); res != 512 || m.flushes.Load() != 1 {
		t.Fatalf("FUA WRITE: result %d, flushes %d; want 512, 1", res, m.flushes.Load())
	}
	if res := b.serve(desc(opFlush, 0, 0), nil); res != 0 || m.flushes.Load() != 2 {
		t.Fatalf("FLUSH: result %d, flushes %d; want 0, 2", res, m.flushes.Load())
	}
}

func TestServeErrors(t *testing.T) {
	m := newMemTarget(1 << 20)
	b := newBackend(badTarget{m, 8192, 512})
	buf := make([]byte, 64<<10)
	cases := []struct {
		name string
		d    ioDesc
		want int32
	}{
		{"read of a failing range", desc(opRead, 4096, 8192), errIO},
		{"write of a failing range", desc(opWrite, 8192, 512), errIO},
		{"read beside it", desc(opRead, 0, 4096), 4096},
		{"read past the end", desc(opRead, 1<<20-512, 1024), errIO},
		{"request larger than the buffer", desc(opRead, 0, 128<<10), errBadRequest},
		{"discard without Discarder", desc(opDiscard, 0, 4096), errNotSupp},
		{"unknown op", desc(opWriteSame, 0, 512), errNotSupp},
		{"zone op", desc(10, 0, 512), errNotSupp},
	}
	for _, c := range cases {
		if got := b.serve(c.d, buf); got != c.want {
			t.Errorf("%s: result %d, want %d", c.name, got, c.want)
		}
	}
}

func TestServeDiscardAndZeroes(t *testing.T) {
	fill := func(m *memTarget) { copy(m.data, bytes.Repeat([]byte{0xAB}, len(m.data))) }
	isZero := func(p []byte) bool { return len(bytes.Trim(p, "\x00")) == 0 }

	// Discarder only: DISCARD and WRITE_ZEROES both go to Discard.
	m := newMemTarget(64 << 10)
	fill(m)
	b := newBackend(discardTarget{m})
	if res := b.serve(desc(opDiscard, 4096, 4096), nil); res != 0 {
		t.Fatalf("DISCARD result %d", res)
	}
	if res := b.serve(desc(opWriteZeroes, 16384, 1024), nil); res != 0 {
		t.Fatalf("WRITE_ZEROES result %d", res)
	}
	if len(m.discards) != 2 || m.discards[0] != (span{4096, 4096}) || m.discards[1] != (span{16384, 1024}) {
		t.Fatalf("discards = %+v", m.discards)
	}
	if !isZero(m.snapshot(4096, 4096)) || !isZero(m.snapshot(16384, 1024)) || m.snapshot(8192, 1)[0] != 0xAB {
		t.Fatal("discarded ranges not zero, or neighbours touched")
	}

	// ZeroWriter is preferred for WRITE_ZEROES.
	m = newMemTarget(64 << 10)
	b = newBackend(zeroTarget{discardTarget{m}})
	if res := b.serve(desc(opWriteZeroes, 0, 2048), nil); res != 0 || len(m.zeroes) != 1 || len(m.discards) != 0 {
		t.Fatalf("WRITE_ZEROES on ZeroWriter: result %d zeroes %+v discards %+v", res, m.zeroes, m.discards)
	}

	// Neither: zeros are written with WriteAt, across several chunks.
	m = newMemTarget(2 << 20)
	fill(m)
	b = newBackend(m)
	if res := b.serve(desc(opWriteZeroes, 512, 1<<20), nil); res != 0 {
		t.Fatalf("WRITE_ZEROES via WriteAt: result %d", res)
	}
	if !isZero(m.snapshot(512, 1<<20)) || m.snapshot(0, 1)[0] != 0xAB || m.snapshot(512+1<<20, 1)[0] != 0xAB {
		t.Fatal("WRITE_ZEROES via WriteAt wrote the wrong range")
	}
}

func TestServeReadOnly(t *testing.T) {
	m := newMemTarget(64 << 10)
	b := newBackend(roTarget{m})
	if !b.readOnly {
		t.Fatal("ReadOnlyer not detected")
	}
	buf := make([]byte, 4096)
	if res := b.serve(desc(opWrite, 0, 4096), buf); res != errIO {
		t.Fatalf("WRITE on read-only: %d, want %d", res, errIO)
	}
	if res := b.serve(desc(opRead, 0, 4096), buf); res != 4096 {
		t.Fatalf("READ on read-only: %d", res)
	}
}

func TestDeviceParams(t *testing.T) {
	var _ blockdev.Discarder = discardTarget{}
	var _ blockdev.ZeroWriter = zeroTarget{}
	rw := deviceParams(newBackend(newMemTarget(1<<20)), 512<<10)
	if rw.Types != paramTypeBasic || rw.Basic.Attrs != attrVolatileCache|attrFUA {
		t.Errorf("plain target: types %#x attrs %#x", rw.Types, rw.Basic.Attrs)
	}
	if rw.Basic.LogicalBSShift != 9 || rw.Basic.PhysicalBSShift != 12 || rw.Basic.MaxSectors != 1024 || rw.Basic.DevSectors != 2048 {
		t.Errorf("basic params %+v", rw.Basic)
	}
	ro := deviceParams(newBackend(roTarget{newMemTarget(1 << 20)}), 512<<10)
	if ro.Basic.Attrs != attrReadOnly || ro.Types != paramTypeBasic {
		t.Errorf("read-only target: types %#x attrs %#x", ro.Types, ro.Basic.Attrs)
	}
	dt := deviceParams(newBackend(discardTarget{newMemTarget(1 << 20)}), 512<<10)
	if dt.Types != paramTypeBasic|paramTypeDiscard || dt.Discard.MaxDiscardSectors == 0 || dt.Discard.Granularity != 4096 || dt.Discard.MaxDiscardSegments != 1 {
		t.Errorf("discard target: types %#x discard %+v", dt.Types, dt.Discard)
	}
	zt := deviceParams(newBackend(struct {
		*memTarget
		blockdev.ZeroWriter
	}{newMemTarget(1 << 20), zeroTarget{}}), 512<<10)
	if zt.Types&paramTypeDiscard == 0 || zt.Discard.MaxDiscardSectors != 0 || zt.Discard.MaxWriteZeroesSectors == 0 {
		t.Errorf("zero-writer target: types %#x discard %+v", zt.Types, zt.Discard)
	}
}

func TestOptionsValidation(t *testing.T) {
	def := Options{}.withDefaults()
	if def.Depth != DefaultDepth || def.MaxIOBytes != DefaultMaxIOBytes || def.Queues < 1 || def.Queues > DefaultMaxQueues || def.Workers != DefaultWorkers || def.BlockThreshold != DefaultBlockThreshold {
		t.Fatalf("defaults %+v", def)
	}
	if err := def.validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if w := (Options{Depth: 4}).withDefaults().Workers; w != 4 {
		t.Errorf("workers not capped at depth: %d", w)
	}
	bad := []struct {
		o    Options
		want string
	}{
		{Options{Depth: 4097}, "Depth"},
		{Options{Depth: -1}, "Depth"},
		{Options{Queues: 5000}, "Queues"},
		{Options{MaxIOBytes: 1000}, "MaxIOBytes"},
		{Options{MaxIOBytes: 64 << 20}, "MaxIOBytes"},
		{Options{Workers: -2}, "Workers"},
		{Options{RecoveryReissue: true}, "Recovery"},
		{Options{InThread: true, AlwaysWorkers: true}, "AlwaysWorkers"},
		{Options{BlockThreshold: -1}, "BlockThreshold"},
		{Options{SpecificID: true, ID: 1 << 20}, "ID"},
	}
	for _, c := range bad {
		err := c.o.withDefaults().validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one naming %s", c.o, err, c.want)
		}
	}
}
