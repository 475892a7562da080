// The unchecked native-order loads and stores below need a little-endian CPU that
// allows unaligned access; elsewhere lz4block_portable.go serves.

//go:build amd64 || arm64 || ppc64le || 386

package zfile

import (
	"math/bits"
	"slices"
	"unsafe"
)

// LZ4 block compression for inputs below 64 KiB + 11 bytes, the only sizes ZFile
// blocks have (4 KiB..64 KiB). It is liblz4's LZ4_compress_generic specialised as
// LZ4_compress_default calls it for such inputs (byU16 table, acceleration 1, no
// dictionary, a clean table, output known to fit), and emits the same bytes as
// pierrec/lz4's CompressorCCompat (the general port) and liblz4, for about 1.2x
// less CPU than CompressorCCompat (BenchmarkLZ4Compress): the hash and table
// layout are constants, the output is known to fit so it is never checked, and
// the search loop is a function of its own so that it stays in registers.
// Constants and names follow lz4.c.
const (
	lz4HashLog      = 12                    // LZ4_HASHLOG, for the default LZ4_MEMORY_USAGE of 14
	lz4TableSize    = 1 << (lz4HashLog + 1) // byU16 entries
	lz4MinMatch     = 4                     // MINMATCH
	lz4MFLimit      = 12                    // MFLIMIT
	lz4LastLiterals = 5                     // LASTLITERALS
	lz4MinLength    = lz4MFLimit + 1        // LZ4_minLength
	lz4SkipTrigger  = 6                     // LZ4_skipTrigger
)

// lz4Compressor holds the byU16 hash table: the position last seen for each
// hash. Not safe for concurrent use.
type lz4Compressor struct {
	table [lz4TableSize]uint16
}

// lz4Hash is LZ4_hash4 for byU16: the top 13 bits of the 32-bit product.
func lz4Hash(v uint32) uint32 {
	return v * 2654435761 >> (32 - (lz4HashLog + 1)) & (lz4TableSize - 1)
}

// Loads and stores at a byte offset from a base pointer, without bounds checks:
// the compressor's positions are proved to stay within its input and its output
// (compressTo's comment says why); the differential tests, a guard-page test and
// FuzzLZ4Compat check them against pierrec/lz4's port of liblz4.
func ld8(p unsafe.Pointer, i int) byte       { return *(*byte)(unsafe.Add(p, i)) }
func ld32(p unsafe.Pointer, i int) uint32    { return *(*uint32)(unsafe.Add(p, i)) }
func ld64(p unsafe.Pointer, i int) uint64    { return *(*uint64)(unsafe.Add(p, i)) }
func st8(p unsafe.Pointer, i int, v byte)    { *(*byte)(unsafe.Add(p, i)) = v }
func st16(p unsafe.Pointer, i int, v uint16) { *(*uint16)(unsafe.Add(p, i)) = v }
func st64(p unsafe.Pointer, i int, v uint64) { *(*uint64)(unsafe.Add(p, i)) = v }

// compress compresses src (shorter than lz4U16Limit) and appends the result to
// dst, as LZ4_compress_default does into a buffer of LZ4_compressBound bytes.
func (c *lz4Compressor) compress(dst, src []byte) []byte {
	if len(src) >= lz4U16Limit {
		panic("zfile: lz4Compressor: input too long")
	}
	if len(src) == 0 {
		return append(dst, 0)
	}
	dst = slices.Grow(dst, lz4Bound(len(src)))
	n := c.compressTo(dst[len(dst):cap(dst)], src)
	return dst[:len(dst)+n]
}

// compressTo is LZ4_compress_generic for a non-empty src shorter than lz4U16Limit
// and an out of at least lz4Bound(len(src)) bytes; it returns the output length.
//
// Bounds: positions searched stop at mfLimitPlusOne, 11 bytes before the end, so
// 4- and 8-byte loads there stay inside src; match extension stops lastLiterals
// before the end. Output never exceeds lz4Bound; the literal copy's 8-byte stores
// run at most 7 bytes past the literals, and at least 8 more output bytes follow
// them (offset, last token, at least 5 last literals).
func (c *lz4Compressor) compressTo(out, src []byte) int {
	_ = out[lz4Bound(len(src))-1]
	t := &c.table
	*t = [lz4TableSize]uint16{}
	var (
		sp, dp         = unsafe.Pointer(&src[0]), unsafe.Pointer(&out[0])
		anchor, di     int
		mfLimitPlusOne = len(src) - lz4MFLimit + 1  // searches stop here
		matchLimit     = len(src) - lz4LastLiterals // matches stop here
	)
	if len(src) < lz4MinLength {
		goto lastLiterals
	}
	t[lz4Hash(ld32(sp, 0))] = 0
	{
		ip := 1
		forwardH := lz4Hash(ld32(sp, ip))
		for {
			var match int
			ip, match = c.search(sp, ip, forwardH, mfLimitPlusOne)
			if match < 0 {
				goto lastLiterals
			}

			// Catch up.
			for ip > anchor && match > 0 && ld8(sp, ip-1) == ld8(sp, match-1) {
				ip--
				match--
			}

			// Encode literals.
			token := di
			{
				litLength := ip - anchor
				di++
				if litLength >= 0xF {
					st8(dp, token, 0xF0)
					l := litLength - 0xF
					for ; l >= 0xFF; l -= 0xFF {
						st8(dp, di, 0xFF)
						di++
					}
					st8(dp, di, byte(l))
					di++
				} else {
					st8(dp, token, byte(litLength<<4))
				}
				// LZ4_wildCopy8: may write up to 7 bytes past the literals, which the
				// offset, the last token and the last literals always overwrite.
				for i := 0; i < litLength; i += 8 {
					st64(dp, di+i, ld64(sp, anchor+i))
				}
				di += litLength
			}

		nextMatch:
			// Encode offset.
			st16(dp, di, uint16(ip-match))
			di += 2

			// Encode match length: LZ4_count from past the first 4 bytes.
			{
				s, m := ip+lz4MinMatch, match+lz4MinMatch
				for s+16 <= matchLimit { // two words a turn, for long runs (tar padding)
					if diff := ld64(sp, m) ^ ld64(sp, s); diff != 0 {
						s += bits.TrailingZeros64(diff) >> 3
						goto counted
					}
					if diff := ld64(sp, m+8) ^ ld64(sp, s+8); diff != 0 {
						s += 8 + bits.TrailingZeros64(diff)>>3
						goto counted
					}
					s += 16
					m += 16
				}
				if s+8 <= matchLimit {
					if diff := ld64(sp, m) ^ ld64(sp, s); diff != 0 {
						s += bits.TrailingZeros64(diff) >> 3
						goto counted
					}
					s += 8
					m += 8
				}
				for s < matchLimit && ld8(sp, m) == ld8(sp, s) {
					s++
					m++
				}
			counted:
				matchCode := s - (ip + lz4MinMatch)
				ip = s
				if matchCode >= 0xF {
					st8(dp, token, ld8(dp, token)+0xF)
					matchCode -= 0xF
					for ; matchCode >= 0xFF; matchCode -= 0xFF {
						st8(dp, di, 0xFF)
						di++
					}
					st8(dp, di, byte(matchCode))
					di++
				} else {
					st8(dp, token, ld8(dp, token)+byte(matchCode))
				}
			}
			anchor = ip

			// Test end of chunk.
			if ip >= mfLimitPlusOne {
				break
			}

			// Fill table.
			t[lz4Hash(ld32(sp, ip-2))] = uint16(ip - 2)

			// Test next position.
			{
				h := lz4Hash(ld32(sp, ip))
				match = int(t[h])
				t[h] = uint16(ip)
				if ld32(sp, match) == ld32(sp, ip) {
					token = di
					st8(dp, di, 0)
					di++
					goto nextMatch
				}
			}

			// Prepare next loop.
			ip++
			forwardH = lz4Hash(ld32(sp, ip))
		}
	}

lastLiterals:
	lastRun := len(src) - anchor
	if lastRun >= 0xF {
		st8(dp, di, 0xF0)
		di++
		acc := lastRun - 0xF
		for ; acc >= 0xFF; acc -= 0xFF {
			st8(dp, di, 0xFF)
			di++
		}
		st8(dp, di, byte(acc))
		di++
	} else {
		st8(dp, di, byte(lastRun<<4))
		di++
	}
	return di + copy(out[di:], src[anchor:])
}

// search is the search loop of LZ4_compress_generic from position ip, whose hash
// is h: it returns the first position whose 4 bytes equal those at the position
// the table has for their hash, and that position, or match -1 if none is left
// before limit. Apart from the compressor, for the register allocator's sake.
func (c *lz4Compressor) search(sp unsafe.Pointer, ip int, h uint32, limit int) (int, int) {
	t := &c.table
	forwardIP := ip
	cur := ld32(sp, ip)
	step, searchMatchNb := 1, 1<<lz4SkipTrigger
	for {
		ip = forwardIP
		forwardIP += step
		step = searchMatchNb >> lz4SkipTrigger
		searchMatchNb++
		if forwardIP > limit {
			return ip, -1
		}
		match := int(t[h&(lz4TableSize-1)])
		t[h&(lz4TableSize-1)] = uint16(ip)
		next := ld32(sp, forwardIP)
		h = lz4Hash(next)
		// No distance check: every position fits in 64 KiB.
		if ld32(sp, match) == cur {
			return ip, match
		}
		cur = next
	}
}
