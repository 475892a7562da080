package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/obd-project/obd/convert"
	"github.com/obd-project/obd/layer"
	"github.com/obd-project/obd/registry"
	obdremote "github.com/obd-project/obd/remote"
	"github.com/obd-project/obd/zfile"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"golang.org/x/term"
)

func registryFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "global-config", Value: "/etc/overlaybd/overlaybd.json", Usage: "overlaybd.json with the registry credentials and certificates (missing file: defaults)"},
		insecureRegistryFlag,
		&cli.BoolFlag{Name: "oci", Usage: "OCI media types (default: Docker, as the reference)"},
	}
}

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert an image (or a rootfs tar) to an OverlayBD image, unprivileged and reproducibly",
		ArgsUsage: "SRC_REF DST  |  --from-tar ROOTFS.tar DST   (DST: an image reference, or a directory path for an OCI layout)",
		Flags: append(registryFlags(),
			&cli.StringFlag{Name: "from-tar", Usage: "build a single-layer image from this uncompressed rootfs tar"},
			&cli.StringFlag{Name: "algorithm", Value: "lz4", Usage: "ZFile compression: lz4 or zstd"},
			&cli.StringFlag{Name: "block-size", Value: "4K", Usage: "ZFile block size, 4K to 64K"},
			&cli.Int64Flag{Name: "vsize", Value: convert.DefaultVSize >> 30, Usage: "virtual disk size in GiB"},
			&cli.StringFlag{Name: "fstype", Value: "ext4", Usage: "file system (only ext4)"},
			&cli.StringFlag{Name: "platform", Usage: "OS/ARCH[/VARIANT] to take out of an index (default: every platform)"},
			&cli.StringFlag{Name: "work-dir", Usage: "directory for the layer files (default: a temporary directory, removed afterwards)"},
		),
		Action: func(c *cli.Context) error {
			if c.String("fstype") != "ext4" {
				return fmt.Errorf("convert: --fstype %q: only ext4 is supported", c.String("fstype"))
			}
			alg, err := zfile.ParseAlgorithm(c.String("algorithm"))
			if err != nil {
				return fmt.Errorf("convert: --algorithm: %w", err)
			}
			bs, err := parseBlockSize(c.String("block-size"))
			if err != nil {
				return err
			}
			if v := c.Int64("vsize"); v < 1 || v > 1024 {
				return fmt.Errorf("convert: --vsize %d: want 1 to 1024 GiB", v)
			}
			args := c.Args().Slice()
			want := 2
			if c.String("from-tar") != "" {
				want = 1
			}
			if len(args) != want {
				return fmt.Errorf("convert: want %d arguments, got %d (usage: obd convert %s)", want, len(args), c.Command.ArgsUsage)
			}
			work := c.String("work-dir")
			if work == "" {
				if work, err = os.MkdirTemp("", "obd-convert-"); err != nil {
					return err
				}
				defer os.RemoveAll(work)
			}
			opts := convert.ImageOptions{
				Options: convert.Options{WorkDir: work, VSize: c.Int64("vsize") << 30, Algorithm: alg, BlockSize: bs},
				OCI:     c.Bool("oci"),
				Logger:  zap.L(),
			}
			if !quiet(c) && term.IsTerminal(int(os.Stderr.Fd())) {
				opts.Progress = func(i, n int, l convert.Layer) {
					fmt.Fprintf(os.Stderr, "layer %d/%d: %d entries, %s of blocks -> %s (%s)\n", i+1, n, l.Stats.Entries,
						humanBytes(uint64(l.ChangedBytes)), l.Digest, humanBytes(uint64(l.Size)))
				}
			}
			var platform *v1.Platform
			if p := c.String("platform"); p != "" {
				if platform, err = v1.ParsePlatform(p); err != nil {
					return fmt.Errorf("convert: --platform %q: %w", p, err)
				}
			}
			ctx := c.Context
			client, err := registryClient(c, platform)
			if err != nil {
				return err
			}
			defer client.Close()
			dst := args[len(args)-1]
			if c.String("from-tar") != "" {
				img, err := convertTar(c.String("from-tar"), platform, opts)
				if err != nil {
					return err
				}
				return writeOutput(ctx, client, dst, img, nil, nil)
			}
			src, err := client.ParseReference(args[0])
			if err != nil {
				return err
			}
			ropts := client.RemoteOptions(ctx)
			if platform != nil {
				ropts = append(ropts, remote.WithPlatform(*platform))
			}
			desc, err := remote.Get(src, ropts...)
			if err != nil {
				return fmt.Errorf("convert: %s: %w", src, err)
			}
			if desc.MediaType.IsIndex() && platform == nil {
				idx, err := desc.ImageIndex()
				if err != nil {
					return err
				}
				out, err := convert.ConvertIndex(idx, opts)
				if err != nil {
					return err
				}
				return writeOutput(ctx, client, dst, nil, out, src)
			}
			img, err := desc.Image()
			if err != nil {
				return fmt.Errorf("convert: %s: %w", src, err)
			}
			out, err := convert.ConvertImage(img, opts)
			if err != nil {
				return err
			}
			return writeOutput(ctx, client, dst, out, nil, src)
		},
	}
}

// registryClient opens registry access as `obd attach REF` does: overlaybd.json's
// credentials and certificates plus --insecure-registry.
func registryClient(c *cli.Context, platform *v1.Platform) (*registry.Client, error) {
	g, err := loadGlobalConfig(c, "global-config")
	if err != nil {
		return nil, err
	}
	o, err := obdremote.OptionsFromGlobal(g)
	if err != nil {
		return nil, err
	}
	o.Registry.Logger = zap.L()
	o.Registry.Platform = platform
	return registry.NewClient(o.Registry)
}

// convertTar converts a rootfs tar into a single-layer image.
func convertTar(path string, platform *v1.Platform, opts convert.ImageOptions) (v1.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	defer f.Close()
	b, err := convert.NewBuilder(opts.Options)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	l, err := b.AddLayer(f, "")
	if err != nil {
		return nil, fmt.Errorf("convert: %s: %w", path, err)
	}
	if opts.Progress != nil {
		opts.Progress(0, 1, l)
	}
	return convert.BuildImage(b.Layers(), defaultConfig(platform), opts.OCI)
}

// defaultConfig is the config of an image built from layers alone: platform only,
// no timestamps (reproducible).
func defaultConfig(p *v1.Platform) *v1.ConfigFile {
	cfg := &v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH}
	if p != nil {
		cfg.OS, cfg.Architecture, cfg.Variant = p.OS, p.Architecture, p.Variant
	}
	return cfg
}

// isLayoutPath says whether DST names a local OCI layout directory rather than a reference.
func isLayoutPath(dst string) bool {
	if strings.HasPrefix(dst, "/") || strings.HasPrefix(dst, "./") || strings.HasPrefix(dst, "../") || dst == "." {
		return true
	}
	st, err := os.Stat(dst)
	return err == nil && st.IsDir()
}

// writeOutput pushes img or idx to dst, or writes an OCI layout there, and prints
// the manifest digest. Blobs dst's repository has are not uploaded again; with src
// on the same registry, blobs its repository has are mounted from there.
func writeOutput(ctx context.Context, client *registry.Client, dst string, img v1.Image, idx v1.ImageIndex, src name.Reference) error {
	var dg v1.Hash
	var err error
	if img != nil {
		dg, err = img.Digest()
	} else {
		dg, err = idx.Digest()
	}
	if err != nil {
		return err
	}
	if isLayoutPath(dst) {
		p, err := layout.FromPath(dst)
		if err != nil {
			if p, err = layout.Write(dst, empty.Index); err != nil {
				return fmt.Errorf("convert: OCI layout %s: %w", dst, err)
			}
		}
		if img != nil {
			err = p.AppendImage(img)
		} else {
			err = p.AppendIndex(idx)
		}
		if err != nil {
			return fmt.Errorf("convert: OCI layout %s: %w", dst, err)
		}
		fmt.Println(dg)
		return nil
	}
	ref, err := client.ParseReference(dst)
	if err != nil {
		return err
	}
	opts := client.RemoteOptions(ctx)
	if src != nil && src.Context().RegistryStr() == ref.Context().RegistryStr() && src.Context().RepositoryStr() != ref.Context().RepositoryStr() {
		if img != nil {
			img = &mountableImage{Image: img, from: src}
		} else {
			idx = &mountableIndex{idx: idx, from: src}
		}
	}
	if img != nil {
		err = remote.Write(ref, img, opts...)
	} else {
		err = remote.WriteIndex(ref, idx, opts...)
	}
	if err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	zap.L().Info("pushed", zap.String("ref", ref.String()), zap.String("digest", dg.String()))
	fmt.Println(dg)
	return nil
}

func pushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "publish committed layers (bottom first, e.g. from obd commit -z -t) as an OverlayBD image",
		ArgsUsage: "LAYER... DST   (DST: an image reference, or a directory path for an OCI layout)",
		Flags: append(registryFlags(),
			&cli.StringFlag{Name: "config", Usage: "image config JSON to start from (its diff_ids are replaced; default: os/arch only)"},
			&cli.StringFlag{Name: "platform", Usage: "OS/ARCH[/VARIANT] of the default config, or of the image taken from an index with --base"},
			&cli.StringFlag{Name: "base", Usage: "overlaybd image REF to stack the layers on (its layers, config and media types stay), e.g. the image a committed container ran from"},
		),
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) < 2 {
				return errors.New("push: want at least one layer and a destination")
			}
			var platform *v1.Platform
			var err error
			if p := c.String("platform"); p != "" {
				if platform, err = v1.ParsePlatform(p); err != nil {
					return fmt.Errorf("push: --platform %q: %w", p, err)
				}
			}
			cfg := defaultConfig(platform)
			if path := c.String("config"); path != "" {
				f, err := os.Open(path)
				if err != nil {
					return fmt.Errorf("push: --config: %w", err)
				}
				cfg, err = v1.ParseConfigFile(f)
				f.Close()
				if err != nil {
					return fmt.Errorf("push: --config %s: %w", path, err)
				}
			}
			var layers []convert.Layer
			for _, p := range args[:len(args)-1] {
				lf, err := layer.OpenFile(p)
				if err != nil {
					return fmt.Errorf("push: %s is not an overlaybd layer: %w", p, err)
				}
				sealed := lf.Trailer().IsSealed()
				tarred := lf.Wrapping.Tar
				lf.Close()
				if !sealed {
					return fmt.Errorf("push: %s is not a committed (sealed) layer; run obd commit first", p)
				}
				if !tarred {
					zap.L().Warn("layer is not tar-wrapped; registries and the snapshotter expect obd commit -t output", zap.String("layer", p))
				}
				dg, size, err := convert.FileDigest(p)
				if err != nil {
					return err
				}
				layers = append(layers, convert.Layer{Path: p, Digest: dg, Size: size})
			}
			client, err := registryClient(c, platform)
			if err != nil {
				return err
			}
			defer client.Close()
			var img v1.Image
			if base := c.String("base"); base != "" {
				if c.IsSet("config") || c.IsSet("oci") {
					return errors.New("push: --base takes the config and the media types from the base image; drop --config/--oci")
				}
				img, err = pushBase(c.Context, client, base, platform, layers)
			} else {
				img, err = convert.BuildImage(layers, cfg, c.Bool("oci"))
			}
			if err != nil {
				return err
			}
			return writeOutput(c.Context, client, args[len(args)-1], img, nil, nil)
		},
	}
}

// pushBase stacks layers on the overlaybd image base (`obd push --base`).
func pushBase(ctx context.Context, client *registry.Client, base string, platform *v1.Platform, layers []convert.Layer) (v1.Image, error) {
	ref, err := client.ParseReference(base)
	if err != nil {
		return nil, err
	}
	opts := client.RemoteOptions(ctx)
	if platform != nil {
		opts = append(opts, remote.WithPlatform(*platform))
	}
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("push: --base %s: %w", base, err)
	}
	img, err = convert.AppendImage(img, layers)
	if err != nil {
		return nil, fmt.Errorf("push: --base %s: %w", base, err)
	}
	return img, nil
}
