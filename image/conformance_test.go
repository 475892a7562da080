package image

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/obd-project/obd/blockdev"
	"github.com/obd-project/obd/blockdev/blockdevtest"
	"github.com/obd-project/obd/config"
)

// The assembled image (the reference's three-layer stack: two lowers, one of them
// from a layer dir, under a copy of its append-only upper) passes the blockdev
// conformance suite, reopened from its config; so does the read-only stack.
func TestConformance(t *testing.T) {
	t.Run("upper", func(t *testing.T) {
		cfgs := map[blockdev.Target]*config.ImageConfig{}
		open := func(t *testing.T, cfg *config.ImageConfig) blockdev.Target {
			im, err := Open(context.Background(), cfg, Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { im.Close() })
			cfgs[im] = cfg
			return im
		}
		blockdevtest.Run(t, func(t *testing.T) blockdev.Target {
			dir := t.TempDir()
			copyFile(t, filepath.Join(bstack, "b2.rw.data"), filepath.Join(dir, "data"))
			copyFile(t, filepath.Join(bstack, "b2.rw.index"), filepath.Join(dir, "index"))
			if err := os.MkdirAll(filepath.Join(dir, "layer1"), 0o755); err != nil {
				t.Fatal(err)
			}
			copyFile(t, filepath.Join(bstack, "b1.commit"), filepath.Join(dir, "layer1", "overlaybd.commit"))
			cfg, err := config.ParseImageConfig([]byte(`{"lowers":[{"file":"`+abs(t, bstack)+`/b0.commit"},
				{"dir":"layer1"}], "upper":{"data":"data","index":"index"}}`), dir)
			if err != nil {
				t.Fatal(err)
			}
			return open(t, cfg)
		}, blockdevtest.Options{Grows: true, Caps: &blockdev.Caps{Discard: true, WriteZeroes: true},
			Reopen: func(t *testing.T, old blockdev.Target) blockdev.Target {
				if err := old.(*Image).Close(); err != nil {
					t.Fatal(err)
				}
				return open(t, cfgs[old])
			}})
	})
	t.Run("readonly", func(t *testing.T) {
		blockdevtest.Run(t, func(t *testing.T) blockdev.Target {
			im, err := Open(context.Background(), parse(t, `{"lowers":[{"file":"b0.commit"},{"file":"b1.commit"},{"file":"b2.commit"}]}`), Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { im.Close() })
			return im
		}, blockdevtest.Options{Caps: &blockdev.Caps{ReadOnly: true, Discard: true, WriteZeroes: true}})
	})
}
