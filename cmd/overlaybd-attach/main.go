// Command overlaybd-attach attaches a config.v1.json through the obd daemon and prints
// the device path, for tools written against the reference's attacher:
//
//	overlaybd-attach CONFIG            attach, print /dev/ublkbN (or the FUSE image file)
//	overlaybd-attach --detach DEVICE   detach
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/obd-project/obd/daemon/api"
)

func main() {
	detach := flag.String("detach", "", "detach DEVICE (path or id) instead of attaching")
	socket := flag.String("socket", envOr("OBD_SOCKET", api.DefaultSocket), "the obd daemon's API socket")
	frontend := flag.String("frontend", "auto", "auto, ublk or fuse")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: overlaybd-attach [--frontend F] CONFIG | overlaybd-attach --detach DEVICE\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	cl := api.NewClient(*socket)
	ctx := context.Background()
	if *detach != "" {
		if flag.NArg() != 0 {
			flag.Usage()
			os.Exit(2)
		}
		if err := cl.Detach(ctx, *detach, false); err != nil {
			fmt.Fprintf(os.Stderr, "overlaybd-attach: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	fe, err := api.ParseFrontend(*frontend)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlaybd-attach: %v\n", err)
		os.Exit(2)
	}
	cfg, err := filepath.Abs(flag.Arg(0))
	if err == nil {
		var st api.Status
		if st, err = cl.Attach(ctx, cfg, fe); err == nil {
			fmt.Println(st.Path)
			return
		}
	}
	fmt.Fprintf(os.Stderr, "overlaybd-attach: %v\n", err)
	os.Exit(1)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
