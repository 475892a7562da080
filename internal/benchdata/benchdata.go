// Package benchdata gives benchmarks input that resembles a layer's content.
package benchdata

import (
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// GoRootFiles returns up to size bytes of real files, the Go toolchain's
// (binaries, sources, test data: about half compressible with LZ4), so that codec
// and decode costs resemble a layer's. It returns fewer bytes when GOROOT holds
// fewer; the caller decides how to fill the rest.
func GoRootFiles(size int) []byte {
	out := make([]byte, 0, size)
	filepath.WalkDir(runtime.GOROOT(), func(path string, d fs.DirEntry, err error) error {
		if err != nil || len(out) >= size {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			if data, err := os.ReadFile(path); err == nil {
				out = append(out, data[:min(len(data), size-len(out))]...)
			}
		}
		return nil
	})
	return out
}
