package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/obd-project/obd/registry/registrytest"
)

func TestCredentialService(t *testing.T) {
	reg := registrytest.New(t, registrytest.WithTokenAuth("bob", "hunter2", 0))
	reg.PushLayout(t, goldenLayout, "ns/hello")
	var asked atomic.Value
	var pass atomic.Value
	pass.Store("hunter2")
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Store(r.URL.Query().Get("remote_url"))
		a := base64.StdEncoding.EncodeToString([]byte("bob:" + pass.Load().(string)))
		fmt.Fprintf(w, `{"traceId": "t1", "success": true, "data": {"auths": {"elsewhere": {"auth": "eDp5"}, %q: {"auth": %q}}}}`, reg.Host+"/ns", a)
	})
	httpSrv := httptest.NewServer(handler)
	defer httpSrv.Close()
	sock := filepath.Join(t.TempDir(), "cred.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	udsSrv := &http.Server{Handler: handler}
	go udsSrv.Serve(l)
	defer udsSrv.Close()

	ref := reg.Ref("ns/hello:amd64-converted")
	for _, svc := range []CredentialService{{Mode: "http", Path: httpSrv.URL + "/auth"}, {Mode: "uds", Path: sock}} {
		pass.Store("hunter2")
		c := testClient(t, Options{CredentialService: &svc})
		im, err := c.Resolve(context.Background(), ref)
		if err != nil {
			t.Fatalf("%s: %v", svc.Mode, err)
		}
		if got, want := asked.Load(), "https://"+reg.Host+"/v2/ns/hello/blobs/"; got != want {
			t.Errorf("%s: remote_url %v, want %s", svc.Mode, got, want)
		}
		b, err := c.OpenBlob(context.Background(), im.BlobURL(helloLayer), helloLayerSize)
		if err != nil {
			t.Fatalf("%s: %v", svc.Mode, err)
		}
		b.Close()
		// The service is asked again for a new token: a wrong answer now fails.
		pass.Store("wrong")
		reg.Tokens.RevokeAll()
		b2, err := c.OpenBlob(context.Background(), im.BlobURL(helloLayer), helloLayerSize)
		if err == nil {
			b2.Close()
		}
		if !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: after the service changed its answer: %v", svc.Mode, err)
		}
	}
	for _, bad := range []CredentialService{{Mode: "ftp", Path: "x"}, {Mode: "http", Path: "/no/scheme"}, {Mode: "https", Path: "http://x"}} {
		if _, err := NewClient(Options{CredentialService: &bad}); err == nil || !strings.Contains(err.Error(), "credentialConfig") {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}
