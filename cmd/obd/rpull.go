package main

import (
	"fmt"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/snapshotters"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/obd-project/obd/registry"
	"github.com/obd-project/obd/remote"
)

func rpullCommand() *cli.Command {
	return &cli.Command{
		Name:      "rpull",
		Usage:     "lazily pull an overlaybd image into containerd: manifest and config only, layers served on demand",
		ArgsUsage: "REF",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "containerd-address", Value: "/run/containerd/containerd.sock", Usage: "containerd's socket", EnvVars: []string{"CONTAINERD_ADDRESS"}},
			&cli.StringFlag{Name: "namespace", Value: "default", Usage: "containerd namespace", EnvVars: []string{"CONTAINERD_NAMESPACE"}},
			&cli.StringFlag{Name: "snapshotter", Value: "overlaybd", Usage: "containerd's name of the overlaybd snapshotter"},
			&cli.BoolFlag{Name: "plain-http", Usage: "talk plain HTTP to the registry (loopback registries always are)"},
			&cli.StringFlag{Name: "config", Value: "/etc/overlaybd/overlaybd.json", Usage: "global config whose credentialConfig gives the registry credentials, as for `obd attach REF` (missing file: docker's config)"},
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, 1); err != nil {
				return err
			}
			ref := c.Args().First()
			client, err := containerd.New(c.String("containerd-address"))
			if err != nil {
				return fmt.Errorf("containerd at %s: %w", c.String("containerd-address"), err)
			}
			defer client.Close()
			ctx := namespaces.WithNamespace(c.Context, c.String("namespace"))
			ctx, done, err := client.WithLease(ctx)
			if err != nil {
				return err
			}
			defer done(ctx)
			plain := docker.MatchLocalhost
			if c.Bool("plain-http") {
				plain = docker.MatchAllHosts
			}
			g, err := loadGlobalConfig(c, "config")
			if err != nil {
				return err
			}
			ro, err := remote.OptionsFromGlobal(g)
			if err != nil {
				return err
			}
			kc, err := registry.Keychain(ro.Registry)
			if err != nil {
				return err
			}
			resolver := docker.NewResolver(docker.ResolverOptions{
				Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(plain),
					docker.WithAuthorizer(docker.NewDockerAuthorizer(docker.WithAuthCreds(keychainCreds(kc, ref))))),
			})
			// The layer annotations (overlaybd blob digest and size) and the image
			// reference reach the snapshotter as labels: it serves the layers remotely
			// and containerd's unpacker fetches none of them.
			img, err := client.Pull(ctx, ref,
				containerd.WithResolver(resolver),
				containerd.WithPullUnpack,
				containerd.WithPullSnapshotter(c.String("snapshotter")),
				containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(ref)))
			if err != nil {
				return fmt.Errorf("rpull %s: %w", ref, err)
			}
			zap.L().Info("image pulled lazily", zap.String("ref", img.Name()), zap.String("digest", img.Target().Digest.String()))
			fmt.Println(img.Name())
			return nil
		},
	}
}

// keychainCreds answers containerd's resolver with the keychain's credentials for
// host: the image's repository when it lives there, else the registry.
func keychainCreds(kc authn.Keychain, ref string) func(host string) (string, string, error) {
	return func(host string) (string, string, error) {
		var res authn.Resource
		regHost := host
		if host == "registry-1.docker.io" { // containerd's name for Docker Hub's API host
			regHost = name.DefaultRegistry
		}
		if r, err := name.ParseReference(ref); err == nil && r.Context().RegistryStr() == regHost {
			res = r.Context()
		} else if reg, err := name.NewRegistry(regHost); err == nil {
			res = reg
		} else {
			return "", "", nil
		}
		auth, err := kc.Resolve(res)
		if err != nil {
			return "", "", err
		}
		cfg, err := auth.Authorization()
		if err != nil {
			return "", "", err
		}
		return cfg.Username, cfg.Password, nil
	}
}
