package registry

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/obd-project/obd/internal/blobio"
	"github.com/obd-project/obd/registry/registrytest"
)

// intentProxy is a DataProxy that sends every request directly and records the
// intent it was given.
type intentProxy struct {
	mu   sync.Mutex
	seen []blobio.Intent
}

func (p *intentProxy) RoundTrip(req *http.Request, direct http.RoundTripper, in blobio.Intent) (*http.Response, error) {
	p.mu.Lock()
	p.seen = append(p.seen, in)
	p.mu.Unlock()
	return direct.RoundTrip(req)
}

var _ blobio.Reader = (*Blob)(nil)

// Each data request reaches the DataProxy with the intent of the read it serves:
// ReadAt is on demand, ReadAtIntent passes its own.
func TestDataProxyGetsReadIntent(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	dp := &intentProxy{}
	c := testClient(t, Options{DataProxy: dp})
	b, err := c.OpenBlob(context.Background(), reg.BlobURL("hello-world", helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	dp.mu.Lock()
	dp.seen = nil // the open's probe (sent directly: it finds out who serves the blob)
	dp.mu.Unlock()
	buf := make([]byte, 100)
	if _, err := b.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	for _, in := range []blobio.Intent{blobio.Background, blobio.Exact, blobio.ReadAhead} {
		if _, err := b.ReadAtIntent(context.Background(), in, buf, 100); err != nil {
			t.Fatal(err)
		}
	}
	want := []blobio.Intent{blobio.Demand, blobio.Background, blobio.Exact, blobio.ReadAhead}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if !slices.Equal(dp.seen, want) {
		t.Fatalf("intents at the DataProxy %+v, want %+v", dp.seen, want)
	}
}
