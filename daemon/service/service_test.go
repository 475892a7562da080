package service

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/daemon/api"
	"go.uber.org/zap/zaptest"
)

// Run answers the API until its context ends, then stops and returns.
func TestRunServesAPIUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	g := config.DefaultGlobalConfig()
	o := Options{Global: g, StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"),
		Socket: filepath.Join(dir, "run", "obd.sock"), CacheDir: filepath.Join(dir, "cache"), Logger: zaptest.NewLogger(t)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	cl := api.NewClient(o.Socket)
	var err error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var devs []api.Status
		if devs, err = cl.List(ctx); err == nil {
			if len(devs) != 0 {
				t.Fatalf("a new daemon lists %+v", devs)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Run returned before serving: %v", err)
		default:
		}
	}
	if err != nil {
		t.Fatalf("the API never answered: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// A metrics address that cannot be listened on fails the start, naming the flag,
// before any device comes back.
func TestRunRefusesBusyMetricsAddr(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	o := Options{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), Socket: filepath.Join(dir, "obd.sock"),
		CacheDir: filepath.Join(dir, "cache"), MetricsAddr: ln.Addr().String(), Logger: zaptest.NewLogger(t)}
	err = Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
		t.Fatalf("Run with a busy metrics address: %v", err)
	}
}
