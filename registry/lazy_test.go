package registry

import (
	"errors"
	"testing"

	"github.com/obd-project/obd/registry/registrytest"
)

// LazyBlob makes no request until the first read, then reads like OpenBlob.
func TestLazyBlob(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	want := goldenBlob(t)
	c := testClient(t, Options{Retry: fastRetry})
	b, err := c.LazyBlob(reg.BlobURL("hello-world", helloLayer), helloLayerSize)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if n := reg.BlobGets(); n != 0 {
		t.Fatalf("LazyBlob made %d blob requests; want none before the first read", n)
	}
	if b.Size() != helloLayerSize {
		t.Fatalf("Size() = %d, want %d", b.Size(), helloLayerSize)
	}
	checkRanges(t, b, want, 3, 20)
	if reg.BlobGets() == 0 {
		t.Fatal("reads made no blob request")
	}
}

func TestLazyBlobErrors(t *testing.T) {
	reg := registrytest.New(t)
	reg.PushLayout(t, goldenLayout, "hello-world")
	c := testClient(t, Options{Retry: fastRetry})
	for _, size := range []int64{0, -1} {
		if _, err := c.LazyBlob(reg.BlobURL("hello-world", helloLayer), size); err == nil {
			t.Errorf("LazyBlob with size %d succeeded", size)
		}
	}
	if _, err := c.LazyBlob("ftp://x/v2/r/blobs/"+helloLayer, 1); err == nil {
		t.Error("LazyBlob accepted an ftp URL")
	}
	// A wrong size is caught by the first read (the registry reports the total).
	b, err := c.LazyBlob(reg.BlobURL("hello-world", helloLayer), helloLayerSize+1)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrBadResponse) {
		t.Errorf("read of a blob with the wrong size: %v; want ErrBadResponse", err)
	}
	// Not found surfaces at the first read.
	nf, err := c.LazyBlob(reg.BlobURL("hello-world", "sha256:0000000000000000000000000000000000000000000000000000000000000000"), 10)
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	if _, err := nf.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("read of a missing blob: %v; want ErrNotFound", err)
	}
}
