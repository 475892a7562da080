package registry

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/obd-project/obd/registry/registrytest"
	"net/http"
	"net/http/httptest"
)

const (
	goldenLayout    = "../testdata/golden/hello-world-oci"
	helloLayer      = "sha256:022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d"
	helloLayerSize  = 642560
	helloManifest   = "sha256:42caa56a19e082b872d43f645bb392e25c9e78bce429755bd709fac598265f88"
	plainAMD64Layer = "sha256:719385e32844401d57ecfd3eacab360bf551a1491c05b85806ed8f1b08d792f6"
)

// testClient is a Client with no ambient credentials (no docker config lookups).
func testClient(t *testing.T, o Options) *Client {
	t.Helper()
	if o.Keychain == nil {
		o.Keychain = anonymousKeychain{}
	}
	c, err := NewClient(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestResolveGoldenOverlaybd(t *testing.T) {
	reg := registrytest.New(t)
	tags := reg.PushLayout(t, goldenLayout, "hello-world")
	if tags["amd64-converted"] != helloManifest {
		t.Fatalf("layout tags: %v", tags)
	}
	c := testClient(t, Options{})
	im, err := c.Resolve(context.Background(), reg.Ref("hello-world:amd64-converted"))
	if err != nil {
		t.Fatal(err)
	}
	if im.Digest != helloManifest {
		t.Errorf("digest %s, want %s", im.Digest, helloManifest)
	}
	if want := "http://" + reg.Host + "/v2/hello-world/blobs"; im.RepoBlobURL != want {
		t.Errorf("RepoBlobURL %s, want %s", im.RepoBlobURL, want)
	}
	if len(im.Layers) != 1 {
		t.Fatalf("%d layers", len(im.Layers))
	}
	l := im.Layers[0]
	if l.Digest != helloLayer || l.Size != helloLayerSize || !l.Overlaybd || l.Version != "0.1.0" ||
		l.MediaType != "application/vnd.oci.image.layer.v1.tar" || l.Annotations[AnnotationBlobSize] != "642560" {
		t.Errorf("layer %+v", l)
	}
	lowers := im.Lowers()
	if len(lowers) != 1 || lowers[0].Digest != helloLayer || lowers[0].Size != helloLayerSize {
		t.Errorf("lowers %+v", lowers)
	}
	// By digest too.
	im2, err := c.Resolve(context.Background(), reg.Ref("hello-world@"+helloManifest))
	if err != nil || im2.Layers[0].Digest != helloLayer {
		t.Fatalf("by digest: %v %+v", err, im2)
	}
}

func TestResolveNotOverlaybd(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	c := testClient(t, Options{})
	_, err := c.Resolve(context.Background(), reg.Ref("hello-world:amd64"))
	if !errors.Is(err, ErrNotOverlaybd) {
		t.Fatalf("err %v, want ErrNotOverlaybd", err)
	}
	for _, want := range []string{"layer 0", plainAMD64Layer, "application/vnd.docker.image.rootfs.diff.tar.gzip"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// ResolveManifest still lists it.
	im, err := c.ResolveManifest(context.Background(), reg.Ref("hello-world:amd64"))
	if err != nil || len(im.Layers) != 1 || im.Layers[0].Overlaybd {
		t.Fatalf("ResolveManifest: %v %+v", err, im)
	}
	// The docker manifest list picks linux/amd64 by default.
	im, err = c.ResolveManifest(context.Background(), reg.Ref("hello-world:docker-list"))
	if err != nil || im.Layers[0].Digest != plainAMD64Layer {
		t.Fatalf("docker-list: %v %+v", err, im)
	}
}

func TestResolveMultiLayerAndIndex(t *testing.T) {
	reg := registrytest.New(t)
	gen := registrytest.OverlaybdImage(t, 1, 1000, 70000, 3)
	reg.PushImage(t, "gen", "v1", gen.Image)
	plain := registrytest.PlainImage(t, 2, 500, 600)
	// An index: the overlaybd image for linux/amd64, a plain one for linux/arm64.
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, "application/vnd.oci.image.index.v1+json"),
		mutate.IndexAddendum{Add: gen.Image, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: plain.Image, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
	reg.PushIndex(t, "gen", "multi", idx)

	c := testClient(t, Options{})
	for _, ref := range []string{"gen:v1", "gen:multi"} {
		im, err := c.Resolve(context.Background(), reg.Ref(ref))
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if len(im.Layers) != 3 {
			t.Fatalf("%s: %d layers", ref, len(im.Layers))
		}
		for i, l := range im.Layers {
			if !l.Overlaybd || l.Size != int64(len(gen.Blobs[i])) || l.Index != i {
				t.Errorf("%s: layer %d: %+v", ref, i, l)
			}
		}
	}
	arm := testClient(t, Options{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}})
	_, err := arm.Resolve(context.Background(), reg.Ref("gen:multi"))
	if !errors.Is(err, ErrNotOverlaybd) || !strings.Contains(err.Error(), "layer 0") {
		t.Fatalf("arm64: %v", err)
	}
	ppc := testClient(t, Options{Platform: &v1.Platform{OS: "linux", Architecture: "ppc64le"}})
	if _, err := ppc.Resolve(context.Background(), reg.Ref("gen:multi")); err == nil {
		t.Fatal("ppc64le resolved from an index without it")
	}
}

func TestResolveErrors(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	c := testClient(t, Options{Retry: RetryPolicy{MaxAttempts: 2}})
	if _, err := c.Resolve(context.Background(), reg.Ref("hello-world:nope")); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tag: %v", err)
	}
	if _, err := c.Resolve(context.Background(), "not a ref!"); err == nil || !strings.Contains(err.Error(), "not a ref!") {
		t.Errorf("bad ref: %v", err)
	}
	// A non-loopback registry over plain HTTP is refused unless opted in.
	if _, err := c.Resolve(context.Background(), "example.invalid/x:y"); err == nil {
		t.Error("resolved example.invalid")
	}
	req := httptestRequest(t, "http://example.invalid/v2/")
	if _, err := c.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "refusing plain HTTP") {
		t.Errorf("plain HTTP to a remote host: %v", err)
	}
	// Annotations disagreeing with the descriptor are a broken manifest.
	l := static.NewLayer([]byte("0123456789"), types.OCIUncompressedLayer)
	d, _ := l.Digest()
	bad, err := mutate.Append(empty.Image, mutate.Addendum{Layer: l, Annotations: map[string]string{
		AnnotationBlobDigest: d.String(), AnnotationBlobSize: "11"}})
	if err != nil {
		t.Fatal(err)
	}
	reg.PushImage(t, "bad", "size", bad)
	if _, err := c.Resolve(context.Background(), reg.Ref("bad:size")); !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), "blob-size") {
		t.Errorf("bad blob-size annotation: %v", err)
	}
}

func TestRepoBlobURL(t *testing.T) {
	c := testClient(t, Options{PlainHTTP: []string{"myreg.lan:5000"}})
	for ref, want := range map[string]string{
		"redis:7":                     "https://registry-1.docker.io/v2/library/redis/blobs",
		"docker.io/overlaybd/redis:7": "https://registry-1.docker.io/v2/overlaybd/redis/blobs",
		"ghcr.io/a/b/c@sha256:" + strings.Repeat("0", 64): "https://ghcr.io/v2/a/b/c/blobs",
		"localhost:5000/x:y":                              "http://localhost:5000/v2/x/blobs",
		"[::1]:5000/x:y":                                  "http://[::1]:5000/v2/x/blobs",
		"myreg.lan:5000/x:y":                              "http://myreg.lan:5000/v2/x/blobs",
		"10.0.0.1:5000/x:y":                               "https://10.0.0.1:5000/v2/x/blobs", // no RFC 1918 downgrade
	} {
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.repoBlobURL(r.Context()); got != want {
			t.Errorf("%s: %s, want %s", ref, got, want)
		}
	}
}

func httptestRequest(t *testing.T, u string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

type anonymousKeychain struct{}

func (anonymousKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.Anonymous, nil
}

func TestUserAgent(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("User-Agent")
	}))
	defer srv.Close()
	c := testClient(t, Options{})
	resp, err := c.RoundTrip(httptestRequest(t, srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ua := <-got; ua != "obd/"+Version {
		t.Errorf("User-Agent %q", ua)
	}
}

// A manifest larger than 4 MiB is refused, whether its size is announced or not.
func TestManifestLimit(t *testing.T) {
	big := strings.Repeat(" ", 5<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return // /v2/: 200, no auth
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		if strings.Contains(r.URL.Path, "chunked") {
			w.(http.Flusher).Flush() // no Content-Length
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		}
		io.WriteString(w, big)
	}))
	defer srv.Close()
	c := testClient(t, Options{Retry: fastRetry})
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, tag := range []string{"sized", "chunked"} {
		_, err := c.Resolve(context.Background(), host+"/x:"+tag)
		if !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), "manifest") {
			t.Errorf("%s: %v", tag, err)
		}
	}
}
