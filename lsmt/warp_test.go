package lsmt

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// buildWarp lays out a sealed warp file by hand, as overlaybd-commit --turboOCI does:
// header | tag-0 data packed from sector 8 | index (not padded) | trailer.
func buildWarp(t *testing.T, fsmeta []byte, entries []Segment) []byte {
	t.Helper()
	h := HeaderTrailer{Flags: flagsSealedHeader, VirtualSize: 1 << 20}
	hb, _ := h.MarshalBinary()
	out := append(hb, fsmeta...)
	h.Flags = flagsSealedTrailer
	h.IndexOffset = uint64(len(out))
	h.IndexSize = uint64(len(entries))
	out = encodeSegments(out, entries)
	tb, _ := h.MarshalBinary()
	return append(out, tb...)
}

func TestWarpLayer(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	fsmeta := make([]byte, 16*SectorSize)
	target := make([]byte, 64*SectorSize)
	fillRandom(r, fsmeta)
	fillRandom(r, target)
	entries := []Segment{
		{Offset: 0, Length: 8, MOffset: 8, Tag: WarpTagFile},
		{Offset: 8, Length: 20, MOffset: 30, Tag: WarpTagTarget},
		{Offset: 40, Length: 8, MOffset: 16, Tag: WarpTagFile},
		{Offset: 48, Length: 4, MOffset: 16, Zeroed: true},
		{Offset: 100, Length: 16383, MOffset: 0, Tag: WarpTagTarget}, // past the target end: zeros
	}
	b := buildWarp(t, fsmeta, entries)
	model := make([]byte, 1<<20)
	copy(model[0:], fsmeta[0:8*SectorSize])
	copy(model[8*SectorSize:], target[30*SectorSize:50*SectorSize])
	copy(model[40*SectorSize:], fsmeta[8*SectorSize:16*SectorSize])
	copy(model[100*SectorSize:], target)

	// A normal open rejects it (tag-1 entries point outside the file); a warp open reads it.
	if _, err := OpenLayer(bytes.NewReader(b), int64(len(b))); err == nil {
		t.Error("OpenLayer accepted a warp layer with out-of-file moffsets")
	}
	l, err := OpenWarpLayer(bytes.NewReader(b), int64(len(b)), bytes.NewReader(target))
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Segments(); len(got) != len(entries) || got[1].Tag != WarpTagTarget {
		t.Fatalf("segments %v", got)
	}
	im, err := NewImage([]*Layer{l}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkReads(t, "warp", im, model)

	// Under a normal layer that overwrites part of it, and flattened.
	var top bytes.Buffer
	data := bytes.Repeat([]byte{0x5a}, 4*SectorSize)
	if err := Commit(&top, Source{Segments: segs(v{10, 4, 0}), Files: []io.ReaderAt{bytes.NewReader(data)}, VirtualSize: 1 << 20}, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	tl, err := openBytes(top.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	copy(model[10*SectorSize:], data)
	im, err = NewImage([]*Layer{l, tl}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkReads(t, "warp+layer", im, model)
	src, err := im.CommitSource()
	if err != nil {
		t.Fatal(err)
	}
	var flat bytes.Buffer
	if err := Commit(&flat, src, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	fl, err := openBytes(flat.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	im, _ = NewImage([]*Layer{fl}, nil)
	checkReads(t, "warp flattened", im, model)

	// Tags other than 0/1 are rejected.
	entries[2].Tag = 2
	if _, err := OpenWarpLayer(bytes.NewReader(buildWarp(t, fsmeta, entries)), int64(len(b)), bytes.NewReader(target)); err == nil {
		t.Error("tag 2 accepted")
	}
}
