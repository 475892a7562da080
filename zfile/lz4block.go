package zfile

import (
	"encoding/binary"
	"math/bits"
	"unsafe"
)

// LZ4 block compression for inputs below 64 KiB + 11 bytes, the only sizes ZFile
// blocks have (4 KiB..64 KiB). It is liblz4's LZ4_compress_generic specialised as
// LZ4_compress_default calls it for such inputs (byU16 table, acceleration 1, no
// dictionary, a clean table, output known to fit), and emits the same bytes as
// pierrec/lz4's CompressorCCompat, the general port, which is about 1.3x slower:
// with the hash and table layout as constants and no output-space checks its
// search loop keeps everything in registers. Constants and names follow lz4.c.
const (
	lz4HashLog      = 12                    // LZ4_HASHLOG, for the default LZ4_MEMORY_USAGE of 14
	lz4TableSize    = 1 << (lz4HashLog + 1) // byU16 entries
	lz4MinMatch     = 4                     // MINMATCH
	lz4MFLimit      = 12                    // MFLIMIT
	lz4LastLiterals = 5                     // LASTLITERALS
	lz4MinLength    = lz4MFLimit + 1        // LZ4_minLength
	lz4SkipTrigger  = 6                     // LZ4_skipTrigger
	lz4U16Limit     = 64<<10 + 11           // LZ4_64Klimit: shorter inputs use the byU16 table
)

// lz4Compressor holds the byU16 hash table (the position last seen for each
// hash) and copies of the input and the output in fixed-size arrays: indexes
// masked to the array's size need no bounds checks, which keeps the search loop
// in registers. Not safe for concurrent use.
type lz4Compressor struct {
	table [lz4TableSize]uint16
	p     unsafe.Pointer
	dst   [lz4BufSize]byte
}

const (
	lz4BufMask = 1<<17 - 1          // covers lz4U16Limit and lz4Bound(lz4U16Limit)
	lz4BufSize = lz4BufMask + 1 + 8 // room for an 8-byte access at any masked index
)

// lz4Hash is LZ4_hash4 for byU16: the top 13 bits of the 32-bit product.
func lz4Hash(v uint32) uint32 {
	return v * 2654435761 >> (32 - (lz4HashLog + 1)) & (lz4TableSize - 1)
}

// lz4Bound is LZ4_compressBound: the largest output for n input bytes.
func lz4Bound(n int) int { return n + n/255 + 16 }

func (c *lz4Compressor) load32(i int) uint32 { return *(*uint32)(unsafe.Add(c.p, i)) }
func (c *lz4Compressor) load64(i int) uint64 { return *(*uint64)(unsafe.Add(c.p, i)) }
func (c *lz4Compressor) srcAt(i int) byte    { return *(*byte)(unsafe.Add(c.p, i)) }
func (c *lz4Compressor) put(i int, b byte)   { c.dst[i&lz4BufMask] = b }

// compress compresses src (shorter than lz4U16Limit) and appends the result to
// dst, as LZ4_compress_default does into a buffer of LZ4_compressBound bytes.
func (c *lz4Compressor) compress(dst, src []byte) []byte {
	if len(src) >= lz4U16Limit {
		panic("zfile: lz4Compressor: input too long")
	}
	if len(src) == 0 {
		return append(dst, 0)
	}
	c.table = [lz4TableSize]uint16{}
	c.p = unsafe.Pointer(&src[0])
	var (
		t              = &c.table
		anchor, di     int
		mfLimitPlusOne = len(src) - lz4MFLimit + 1  // searches stop here
		matchLimit     = len(src) - lz4LastLiterals // matches stop here
	)
	if len(src) < lz4MinLength {
		goto lastLiterals
	}
	t[lz4Hash(c.load32(0))] = 0
	{
		ip := 1
		forwardH := lz4Hash(c.load32(ip))
		for {
			var match int
			ip, match = c.search(ip, forwardH, mfLimitPlusOne)
			if match < 0 {
				goto lastLiterals
			}

			// Catch up.
			for ip > anchor && match > 0 && c.srcAt(ip-1) == c.srcAt(match-1) {
				ip--
				match--
			}

			// Encode literals.
			token := di
			{
				litLength := ip - anchor
				di++
				if litLength >= 0xF {
					c.put(token, 0xF0)
					l := litLength - 0xF
					for ; l >= 0xFF; l -= 0xFF {
						c.put(di, 0xFF)
						di++
					}
					c.put(di, byte(l))
					di++
				} else {
					c.put(token, byte(litLength<<4))
				}
				// LZ4_wildCopy8: may write up to 7 bytes past the literals, which the
				// offset, the last token and the last literals always overwrite.
				for i := 0; i < litLength; i += 8 {
					binary.LittleEndian.PutUint64(c.dst[(di+i)&lz4BufMask:], c.load64(anchor+i))
				}
				di += litLength
			}

		nextMatch:
			// Encode offset.
			binary.LittleEndian.PutUint16(c.dst[di&lz4BufMask:], uint16(ip-match))
			di += 2

			// Encode match length: LZ4_count from past the first 4 bytes.
			{
				s, m := ip+lz4MinMatch, match+lz4MinMatch
				for s+8 <= matchLimit {
					if diff := c.load64(m) ^ c.load64(s); diff != 0 {
						s += bits.TrailingZeros64(diff) >> 3
						goto counted
					}
					s += 8
					m += 8
				}
				for s < matchLimit && c.srcAt(m) == c.srcAt(s) {
					s++
					m++
				}
			counted:
				matchCode := s - (ip + lz4MinMatch)
				ip = s
				if matchCode >= 0xF {
					c.dst[token&lz4BufMask] += 0xF
					matchCode -= 0xF
					for ; matchCode >= 0xFF; matchCode -= 0xFF {
						c.put(di, 0xFF)
						di++
					}
					c.put(di, byte(matchCode))
					di++
				} else {
					c.dst[token&lz4BufMask] += byte(matchCode)
				}
			}
			anchor = ip

			// Test end of chunk.
			if ip >= mfLimitPlusOne {
				break
			}

			// Fill table.
			t[lz4Hash(c.load32(ip-2))] = uint16(ip - 2)

			// Test next position.
			{
				h := lz4Hash(c.load32(ip))
				match = int(t[h])
				t[h] = uint16(ip)
				if c.load32(match) == c.load32(ip) {
					token = di
					c.put(di, 0)
					di++
					goto nextMatch
				}
			}

			// Prepare next loop.
			ip++
			forwardH = lz4Hash(c.load32(ip))
		}
	}

lastLiterals:
	lastRun := len(src) - anchor
	if lastRun >= 0xF {
		c.put(di, 0xF0)
		di++
		acc := lastRun - 0xF
		for ; acc >= 0xFF; acc -= 0xFF {
			c.put(di, 0xFF)
			di++
		}
		c.put(di, byte(acc))
		di++
	} else {
		c.put(di, byte(lastRun<<4))
		di++
	}
	dst = append(dst, c.dst[:di]...)
	return append(dst, src[anchor:]...)
}

// search is the search loop of LZ4_compress_generic from position ip, whose hash
// is h: it returns the first position whose 4 bytes equal those at the position
// the table has for their hash, and that position, or match -1 if none is left
// before limit. Apart from the compressor, for the register allocator's sake.
func (c *lz4Compressor) search(ip int, h uint32, limit int) (int, int) {
	t := &c.table
	forwardIP := ip
	cur := c.load32(ip)
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
		next := c.load32(forwardIP)
		h = lz4Hash(next)
		// No distance check: every position fits in 64 KiB.
		if c.load32(match) == cur {
			return ip, match
		}
		cur = next
	}
}
