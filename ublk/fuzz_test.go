package ublk

import (
	"bytes"
	"testing"
)

// FuzzServe feeds arbitrary descriptors (what the kernel writes into the
// descriptor mmap) to the request path: it must never panic, touch memory out
// of range, or answer a READ with anything but the target's bytes.
func FuzzServe(f *testing.F) {
	f.Add(uint32(opRead), uint32(8), uint64(0))
	f.Add(uint32(opWrite|ioFlagFUA), uint32(1), uint64(2047))
	f.Add(uint32(opDiscard), uint32(1<<20), uint64(1))
	f.Add(uint32(opWriteZeroes), uint32(0xffffffff), uint64(0xffffffffffffffff))
	f.Add(uint32(opFlush), uint32(0), uint64(1<<60))
	f.Add(uint32(18), uint32(3), uint64(9))
	f.Fuzz(func(t *testing.T, opFlags, nrSectors uint32, start uint64) {
		const size = 1 << 20
		m := newMemTarget(size)
		for i := range m.data {
			m.data[i] = byte(i * 7)
		}
		orig := append([]byte(nil), m.data...)
		b := newBackend(discardTarget{m})
		buf := make([]byte, 64<<10)
		d := ioDesc{OpFlags: opFlags, NrSectors: nrSectors, StartSector: start}
		res := b.serve(d, buf)
		off, n := int64(start)<<9, int64(nrSectors)<<9
		// A zero-length request at the very end is in range (and harmless).
		inRange := start <= size>>9 && uint64(nrSectors) <= size>>9 && off+n <= size
		switch d.op() {
		case opRead:
			if res >= 0 {
				if !inRange || int64(res) != n || !bytes.Equal(buf[:n], orig[off:off+n]) {
					t.Fatalf("READ %+v answered %d with wrong data or range", d, res)
				}
			}
		case opWrite, opDiscard, opWriteZeroes:
			if res >= 0 && !inRange {
				t.Fatalf("%+v out of range answered %d", d, res)
			}
			if res < 0 && !bytes.Equal(m.data, orig) {
				t.Fatalf("failed %+v modified the target", d)
			}
		case opFlush:
			if res != 0 {
				t.Fatalf("FLUSH answered %d", res)
			}
		default:
			if res != errNotSupp {
				t.Fatalf("unknown op %+v answered %d", d, res)
			}
		}
	})
}
