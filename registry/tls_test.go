package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obd-project/obd/registry/registrytest"
)

func TestTLS(t *testing.T) {
	reg := registrytest.New(t, registrytest.WithTLS(nil))
	reg.PushLayout(t, goldenLayout, "hello-world")
	want := goldenBlob(t)
	ref := reg.Ref("hello-world:amd64-converted")
	ctx := context.Background()
	quick := RetryPolicy{MaxAttempts: 3, BaseDelay: time.Millisecond}

	// Unknown CA: a clear error, not retried to the deadline.
	start := time.Now()
	if _, err := testClient(t, Options{Retry: quick}).Resolve(ctx, ref); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("unknown CA: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("unknown CA took %v", d)
	}

	for name, o := range map[string]Options{
		"CAFile":             {CAFile: reg.CAFile(t)},
		"InsecureSkipVerify": {InsecureSkipVerify: []string{reg.Host}},
	} {
		c := testClient(t, o)
		im, err := c.Resolve(ctx, ref)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.HasPrefix(im.RepoBlobURL, "https://"+reg.Host+"/") {
			t.Errorf("%s: RepoBlobURL %s", name, im.RepoBlobURL)
		}
		b, err := c.OpenBlob(ctx, im.BlobURL(helloLayer), helloLayerSize)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkRanges(t, b, want, 5, 3)
		b.Close()
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	os.WriteFile(bad, []byte("not pem"), 0o600)
	if _, err := NewClient(Options{CAFile: bad}); err == nil {
		t.Error("CA file without PEM accepted")
	}
}

func TestTLSClientCert(t *testing.T) {
	cc := registrytest.NewClientCert(t)
	reg := registrytest.New(t, registrytest.WithTLS(cc.Pool))
	reg.PushCert = &cc.Cert
	reg.PushLayout(t, goldenLayout, "hello-world")
	ctx := context.Background()
	ref := reg.Ref("hello-world:amd64-converted")
	quick := RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond}
	if _, err := testClient(t, Options{CAFile: reg.CAFile(t), Retry: quick}).Resolve(ctx, ref); err == nil {
		t.Error("resolved without the required client certificate")
	}
	c := testClient(t, Options{CAFile: reg.CAFile(t), CertFile: cc.CertFile, KeyFile: cc.KeyFile})
	im, err := c.Resolve(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.OpenBlob(ctx, im.BlobURL(helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkRanges(t, b, goldenBlob(t), 6, 3)
	if _, err := NewClient(Options{CertFile: cc.CertFile, KeyFile: cc.CertFile}); err == nil {
		t.Error("bad key file accepted")
	}
	_ = errors.Is
}
