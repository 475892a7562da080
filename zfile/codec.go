package zfile

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// zstdDecoder is shared by all readers: DecodeAll is safe for concurrent use and the
// decoder keeps GOMAXPROCS block decoders. Output is capped at the destination's
// capacity, so a forged frame cannot make it allocate beyond one block.
var zstdDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(MaxBlockSize),
		zstd.WithDecodeAllCapLimit(true))
})

// decompressBlock decodes src into dst, which has exactly the expected uncompressed
// length of the block; anything else is an error.
func decompressBlock(algo Algorithm, src, dst []byte) error {
	var n int
	switch algo {
	case LZ4:
		var err error
		if n, err = lz4.UncompressBlock(src, dst); err != nil {
			return fmt.Errorf("lz4: %w", err)
		}
	case Zstd:
		dec, err := zstdDecoder()
		if err != nil {
			return err
		}
		out, err := dec.DecodeAll(src, dst[:0:len(dst)])
		if err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		if len(out) > 0 && &out[0] != &dst[0] {
			return errors.New("zstd: output exceeds block size")
		}
		n = len(out)
	default:
		return fmt.Errorf("unsupported algorithm %v", algo)
	}
	if n != len(dst) {
		return fmt.Errorf("decompressed %d bytes, want %d", n, len(dst))
	}
	return nil
}

// blockCompressor compresses one block at a time; one per worker (not concurrency safe).
// Output depends only on the input block, which is what makes parallel output
// identical to single-worker output. LZ4 output is byte-identical to the reference's
// LZ4_compress_default; zstd output differs from libzstd's but decodes with it.
type blockCompressor struct {
	algo Algorithm
	lz   *lz4Compressor         // LZ4_compress_default for blocks up to 64 KiB + 10 bytes
	lzXL *lz4.CompressorCCompat // the same for longer input, which ZFile blocks never are
	zenc *zstd.Encoder
}

func newBlockCompressor(algo Algorithm) (*blockCompressor, error) {
	c := &blockCompressor{algo: algo}
	switch algo {
	case LZ4:
		c.lz = new(lz4Compressor)
	case Zstd:
		// Level 3 like the reference's ZSTD_compress(..., 3); no frame checksum (the
		// block CRC covers it), as ZSTD_compress does by default.
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(3)),
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(false))
		if err != nil {
			return nil, err
		}
		c.zenc = enc
	default:
		return nil, fmt.Errorf("zfile: unsupported algorithm %v", algo)
	}
	return c, nil
}

// lz4U16Limit is LZ4_64Klimit: shorter inputs use the byU16 table
// (lz4Compressor); ZFile blocks always are.
const lz4U16Limit = 64<<10 + 11

// lz4Bound is LZ4_compressBound: the largest output for n input bytes.
func lz4Bound(n int) int { return lz4.CompressBlockBound(n) }

// appendBlock appends the compressed form of src to dst. The LZ4 worst case for a
// 64 KiB block (65,809 bytes) and zstd's (65,824) both fit the reference's bs+512
// buffer, so no block ever needs special handling for being incompressible.
func (c *blockCompressor) appendBlock(dst, src []byte) ([]byte, error) {
	switch c.algo {
	case LZ4:
		if len(src) < lz4U16Limit {
			return c.lz.compress(dst, src), nil
		}
		if c.lzXL == nil {
			c.lzXL = new(lz4.CompressorCCompat)
		}
		bound := lz4Bound(len(src))
		dst = slices.Grow(dst, bound)
		n, err := c.lzXL.CompressBlock(src, dst[len(dst):len(dst)+bound])
		if err != nil {
			return nil, fmt.Errorf("zfile: lz4 compress: %w", err)
		}
		if n == 0 {
			return nil, errors.New("zfile: lz4 compress produced no output")
		}
		return dst[:len(dst)+n], nil
	default:
		return c.zenc.EncodeAll(src, dst), nil
	}
}
