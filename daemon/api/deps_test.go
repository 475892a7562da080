package api

import (
	"os/exec"
	"strings"
	"testing"
)

// Clients (CLI, overlaybd-attach, the snapshotter) import this package without
// the daemon: no image assembly, device, FUSE or cache code may come with it.
func TestImportsNoDaemonCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, heavy := range []string{"/daemon", "/image", "/ublk", "/fuseblk", "/cache", "/remote", "/registry", "/p2p", "/lsmt", "/zfile"} {
			if strings.HasPrefix(pkg, "github.com/obd-project/obd"+heavy) && pkg != "github.com/obd-project/obd/daemon/api" {
				t.Errorf("daemon/api depends on %s", pkg)
			}
		}
	}
}
