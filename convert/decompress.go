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
// told by its magic bytes. Closing the returned reader closes blob.
func uncompressed(blob io.ReadCloser) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(blob, 1<<20)
	head, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			blob.Close()
			return nil, fmt.Errorf("gzip layer: %w", err)
		}
		return &decompressed{Reader: zr, close: func() { zr.Close(); blob.Close() }}, nil
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			blob.Close()
			return nil, fmt.Errorf("zstd layer: %w", err)
		}
		return &decompressed{Reader: zr, close: func() { zr.Close(); blob.Close() }}, nil
	}
	return &decompressed{Reader: br, close: func() { blob.Close() }}, nil
}

type decompressed struct {
	io.Reader
	close func()
}

func (d *decompressed) Close() error { d.close(); return nil }
