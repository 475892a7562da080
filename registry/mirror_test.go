package registry

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

// deadHost is a loopback address where nothing listens.
func deadHost(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestMirrorServesBeforeOrigin(t *testing.T) {
	origin := registrytest.New(t)
	mirror := registrytest.New(t)
	mirror.PushLayout(t, goldenLayout, "hello-world") // only the mirror has the image
	want := goldenBlob(t)
	ctx := context.Background()
	quick := RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond}

	c := testClient(t, Options{Retry: quick, Mirrors: map[string][]string{origin.Host: {deadHost(t), mirror.Host}}})
	im, err := c.Resolve(ctx, origin.Ref("hello-world:amd64-converted"))
	if err != nil {
		t.Fatal(err)
	}
	// The config names the origin, so it stays usable without the mirror.
	if im.Registry != origin.Host || !strings.Contains(im.RepoBlobURL, origin.Host) {
		t.Fatalf("image names %s / %s, want the origin %s", im.Registry, im.RepoBlobURL, origin.Host)
	}
	b, err := c.OpenBlob(ctx, im.BlobURL(helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.URL(), mirror.Host) {
		t.Errorf("blob read from %s, want the mirror %s", b.URL(), mirror.Host)
	}
	checkRanges(t, b, want, 7, 3)
	b.Close()

	// Without the mirror the origin answers: not found.
	if _, err := testClient(t, Options{Retry: quick}).Resolve(ctx, origin.Ref("hello-world:amd64-converted")); err == nil {
		t.Fatal("origin resolved an image it does not have")
	}
}

func TestMirrorFallsBackToOrigin(t *testing.T) {
	origin := registrytest.New(t)
	origin.PushLayout(t, goldenLayout, "hello-world")
	empty := registrytest.New(t) // a mirror without the image
	ctx := context.Background()
	quick := RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond}
	c := testClient(t, Options{Retry: quick, Mirrors: map[string][]string{origin.Host: {deadHost(t), empty.Host}}})
	im, err := c.Resolve(ctx, origin.Ref("hello-world:amd64-converted"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.OpenBlob(ctx, im.BlobURL(helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.URL(), origin.Host) {
		t.Errorf("blob read from %s, want the origin %s", b.URL(), origin.Host)
	}
	checkRanges(t, b, goldenBlob(t), 8, 2)
	b.Close()
}

func TestMirrorsOfDockerHub(t *testing.T) {
	c := testClient(t, Options{Mirrors: map[string][]string{"docker.io": {"m:5000"}}})
	for _, h := range []string{"docker.io", "index.docker.io", "registry-1.docker.io"} {
		if got := c.mirrorsOf(h); len(got) != 1 || got[0] != "m:5000" {
			t.Errorf("mirrorsOf(%s) = %q", h, got)
		}
	}
	if got := c.mirrorsOf("quay.io"); got != nil {
		t.Errorf("mirrorsOf(quay.io) = %q", got)
	}
}

// An untrusted certificate names what to configure.
func TestTLSErrorSuggestsConfig(t *testing.T) {
	reg := registrytest.New(t, registrytest.WithTLS(nil))
	reg.PushLayout(t, goldenLayout, "hello-world")
	quick := RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond}
	_, err := testClient(t, Options{Retry: quick}).Resolve(context.Background(), reg.Ref("hello-world:amd64-converted"))
	if err == nil || !strings.Contains(err.Error(), "certConfig.caFile") || !strings.Contains(err.Error(), "--insecure-registry "+reg.Host) {
		t.Fatalf("err %v, want a hint naming certConfig.caFile and --insecure-registry", err)
	}
}
