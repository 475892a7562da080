//go:build !(amd64 || arm64 || ppc64le || 386)

package zfile

import "github.com/pierrec/lz4/v4"

// Where lz4block.go's native-order unaligned loads do not hold (big-endian or
// strict-alignment CPUs), pierrec/lz4's port of LZ4_compress_default compresses
// ZFile blocks: the same bytes, at its speed.

// lz4Compressor wraps the general port. Not safe for concurrent use.
type lz4Compressor struct {
	c lz4.CompressorCCompat
}

// compress compresses src and appends the result to dst.
func (c *lz4Compressor) compress(dst, src []byte) []byte {
	if len(src) == 0 {
		return append(dst, 0)
	}
	n := len(dst)
	dst = append(dst, make([]byte, lz4Bound(len(src)))...)
	m, err := c.c.CompressBlock(src, dst[n:])
	if err != nil {
		panic("zfile: lz4 compress into a buffer of LZ4_compressBound bytes: " + err.Error())
	}
	return dst[:n+m]
}
