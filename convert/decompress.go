package convert

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// uncompressed returns the layer tar inside a blob stream: gzip, zstd or plain,
// told by its magic bytes. Decompression runs in its own goroutine, so it overlaps
// with applying the tar; closing the returned reader stops it.
func uncompressed(blob io.ReadCloser) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		defer blob.Close()
		br := bufio.NewReaderSize(blob, 1<<20)
		head, _ := br.Peek(4)
		var r io.Reader = br
		switch {
		case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
			zr, err := gzip.NewReader(br)
			if err != nil {
				pw.CloseWithError(fmt.Errorf("gzip layer: %w", err))
				return
			}
			defer zr.Close()
			r = zr
		case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
			zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
			if err != nil {
				pw.CloseWithError(fmt.Errorf("zstd layer: %w", err))
				return
			}
			defer zr.Close()
			r = zr
		}
		_, err := io.Copy(pw, r)
		pw.CloseWithError(err)
	}()
	return pr
}
