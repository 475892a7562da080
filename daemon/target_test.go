package daemon

import (
	"testing"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/blockdev/blockdevtest"
)

// The I/O counter passes the blockdev conformance suite over targets of every
// capability set, shows exactly the wrapped target's capabilities (it once claimed
// discard and write-zeroes for every target, so ublk advertised discard for targets
// that could not), and counts the zero writes of the write-zeroes fallback.
func TestCountingTargetConformance(t *testing.T) {
	for _, caps := range []blockdev.Caps{{}, {Discard: true}, {WriteZeroes: true}, {Discard: true, WriteZeroes: true}, {ReadOnly: true}} {
		want := caps
		t.Run(capsName(caps), func(t *testing.T) {
			blockdevtest.Run(t, func(t *testing.T) blockdev.Target {
				inner, _ := blockdevtest.NewMem(1<<20, want)
				return &countingTarget{t: inner, id: 1}
			}, blockdevtest.Options{Caps: &want})
		})
	}
}

func capsName(c blockdev.Caps) string {
	if c == (blockdev.Caps{}) {
		return "plain"
	}
	return map[bool]string{true: "ro"}[c.ReadOnly] + map[bool]string{true: "discard"}[c.Discard] +
		map[bool]string{true: "zeroes"}[c.WriteZeroes]
}

func TestCountingTargetShowsInnerCapabilities(t *testing.T) {
	inner, _ := blockdevtest.NewMem(1<<20, blockdev.Caps{})
	ct := &countingTarget{t: inner}
	var tgt blockdev.Target = ct
	if _, ok := tgt.(blockdev.Discarder); ok {
		t.Error("countingTarget claims Discarder over a target without it")
	}
	if caps := blockdev.CapsOf(ct); caps != (blockdev.Caps{}) {
		t.Errorf("CapsOf(countingTarget over a plain target) = %+v, want none", caps)
	}
	if err := blockdev.WriteZeroes(ct, 4096, 8192); err != nil {
		t.Fatal(err)
	}
	if ct.written.Load() != 8192 {
		t.Errorf("zero-buffer fallback counted %d bytes written, want 8192", ct.written.Load())
	}
}

// mapperTarget maps every range to one extent of a fake file.
type mapperTarget struct{ blockdev.Target }

func (mapperTarget) MapFile(dst []blockdev.FileExtent, off, n int64) ([]blockdev.FileExtent, bool) {
	return append(dst, blockdev.FileExtent{Fd: 7, Offset: off, Length: n}), true
}

// The counter forwards FileMapper (ublk then reads the files itself) and counts
// a mapped range as read; over a target without it, nothing maps.
func TestCountingTargetForwardsMapFile(t *testing.T) {
	inner, _ := blockdevtest.NewMem(1<<20, blockdev.Caps{})
	ct := &countingTarget{t: mapperTarget{inner}}
	ext, ok := ct.MapFile(nil, 4096, 8192)
	if !ok || len(ext) != 1 || ext[0] != (blockdev.FileExtent{Fd: 7, Offset: 4096, Length: 8192}) {
		t.Fatalf("MapFile = %v, %v", ext, ok)
	}
	if got := ct.read.Load(); got != 8192 {
		t.Fatalf("read counter %d after mapping 8192 bytes", got)
	}
	if _, ok := (&countingTarget{t: inner}).MapFile(nil, 0, 512); ok {
		t.Fatal("MapFile mapped a target that has no files")
	}
}
