package registry

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/obd-project/obd/registry/registrytest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

type countingObserver struct {
	mu       sync.Mutex
	requests map[int]int
	bytes    int64
	retries  map[string]int
}

func (o *countingObserver) Request(host string, status int, latency time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.requests == nil {
		o.requests = map[int]int{}
	}
	o.requests[status]++
}

func (o *countingObserver) Bytes(n int64) {
	o.mu.Lock()
	o.bytes += n
	o.mu.Unlock()
}

func (o *countingObserver) Retry(reason string, wait time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.retries == nil {
		o.retries = map[string]int{}
	}
	o.retries[reason]++
}

// Through a redirecting, token-protected registry behind a faulty proxy: the
// observer sees requests, bytes and retries, and neither logs nor errors carry the
// signed query, the token or the password.
func TestObserverAndRedaction(t *testing.T) {
	reg := registrytest.New(t, registrytest.WithTokenAuth("alice", "pa55word", 0), registrytest.WithRedirect(time.Minute))
	reg.PushLayout(t, goldenLayout, "hello-world")
	p := registrytest.NewFaultProxy(t, reg.Storage.URL)
	p.SetMatch(func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/storage/") })
	core, logs := observer.New(zapcore.DebugLevel)
	obs := &countingObserver{}
	c := testClient(t, Options{
		Keychain: staticKeychain{"alice", "pa55word"},
		Retry:    fastRetry,
		Observer: obs,
		Logger:   zap.New(core),
		// Send storage requests through the proxy, as a P2P proxy would be used.
		RewriteURL: func(u string) string { return strings.Replace(u, reg.Storage.URL, p.URL, 1) },
	})
	b, err := c.OpenBlob(context.Background(), reg.BlobURL("hello-world", helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p.SetPlan(registrytest.Sequence(registrytest.Status503))
	checkRanges(t, b, goldenBlob(t), 8, 4)
	p.SetPlan(registrytest.Always(registrytest.Status500))
	_, readErr := b.ReadAt(make([]byte, 10), 0)
	if !errors.Is(readErr, ErrUnavailable) {
		t.Fatalf("persistent 500 from storage: %v", readErr)
	}

	obs.mu.Lock()
	if obs.requests[503] != 1 || obs.requests[500] != fastRetry.MaxAttempts || obs.requests[206] < 5 || obs.requests[307] < 1 {
		t.Errorf("observed requests by status: %v", obs.requests)
	}
	if obs.retries["transient"] != 1+fastRetry.MaxAttempts-1 {
		t.Errorf("observed retries: %v", obs.retries)
	}
	if obs.bytes < 1 {
		t.Errorf("observed bytes: %d", obs.bytes)
	}
	obs.mu.Unlock()

	var text strings.Builder
	text.WriteString(readErr.Error())
	for _, e := range logs.All() {
		text.WriteString(e.Message)
		for _, f := range e.Context {
			text.WriteString(" " + f.String + " ")
			if err, ok := f.Interface.(error); ok {
				text.WriteString(err.Error())
			}
		}
	}
	all := text.String()
	if logs.Len() == 0 {
		t.Fatal("nothing logged")
	}
	for _, secret := range []string{"sig=", "exp=", "pa55word", "Bearer", "YWxpY2U6"} {
		if strings.Contains(all, secret) {
			t.Errorf("logs or errors contain %q:\n%s", secret, all)
		}
	}
	if !strings.Contains(all, "?REDACTED") {
		t.Errorf("storage URL not mentioned (redacted) in:\n%s", all)
	}
}

// Manifest fetches are retried too, within the same bounds.
func TestResolveRetries(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	p := registrytest.NewFaultProxy(t, reg.URL)
	p.SetMatch(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") })
	c := testClient(t, Options{Retry: fastRetry})
	p.SetPlan(registrytest.Sequence(registrytest.Status502, registrytest.ResetMidBody))
	if _, err := c.Resolve(context.Background(), p.Host+"/hello-world:amd64-converted"); err != nil {
		t.Fatalf("after two faults: %v", err)
	}
	p.SetPlan(registrytest.Always(registrytest.Status503))
	_, err := c.Resolve(context.Background(), p.Host+"/hello-world:amd64-converted")
	if !errors.Is(err, ErrUnavailable) || p.Matched() != int64(fastRetry.MaxAttempts) {
		t.Errorf("persistent 503: %v after %d requests", err, p.Matched())
	}
}

type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}
