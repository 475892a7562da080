package config

import (
	"strings"
	"testing"
)

// FuzzParseImageConfig checks that any input yields a config or an error (no panic),
// and that accepted configs satisfy the invariants validate promises.
func FuzzParseImageConfig(f *testing.F) {
	f.Add([]byte(specImageConfig))
	f.Add([]byte(`{"lowers":[{"dir":"d"},{"file":"f","digest":null}],"upper":{"index":"i","data":"d"},"download":{}}`))
	f.Add([]byte(`{"lowers":[{"digest":"` + digestA + `","size":1}],"accelerationLayer":true}`))
	f.Add([]byte(`{"download":{"delay":-1,"blockSize":4294967295}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseImageConfig(data, "/base")
		if err != nil {
			if c != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		if c.AccelerationLayer && c.RecordTracePath != "" {
			t.Fatal("accelerationLayer with recordTracePath accepted")
		}
		if c.Download.BlockSize == 0 {
			t.Fatal("zero download block size accepted")
		}
		for i, l := range c.Lowers {
			if l.Digest != "" && (len(l.Digest) != 71 || !strings.HasPrefix(l.Digest, "sha256:")) {
				t.Fatalf("lowers[%d].digest %q accepted", i, l.Digest)
			}
			for _, p := range []string{l.File, l.Dir, l.TargetFile, l.GzipIndex} {
				if p != "" && !strings.HasPrefix(p, "/") {
					t.Fatalf("lowers[%d]: relative path %q not resolved", i, p)
				}
			}
		}
	})
}

// FuzzParseGlobalConfig checks that any input yields a config or an error (no panic).
func FuzzParseGlobalConfig(f *testing.F) {
	f.Add([]byte(specGlobalConfig))
	f.Add([]byte(`{"cacheType":"download","logPath":"","cacheConfig":{"refillSize":4096}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := ParseGlobalConfig(data)
		if err != nil {
			return
		}
		c := g.Cache()
		if c.Type != "file" && c.Type != "download" && c.Type != "ocf" {
			t.Fatalf("cache type %q accepted", c.Type)
		}
		if c.RefillSize%4096 != 0 || c.RefillSize&(c.RefillSize-1) != 0 || c.RefillSize == 0 {
			t.Fatalf("refill size %d accepted", c.RefillSize)
		}
	})
}
