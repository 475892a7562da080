package main

import (
	"fmt"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/snapshotters"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
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
			resolver := docker.NewResolver(docker.ResolverOptions{
				Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(plain)),
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
