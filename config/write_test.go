package config

import (
	"reflect"
	"testing"
)

func TestEncodeRoundTrip(t *testing.T) {
	in := &ImageConfig{
		RepoBlobURL: "https://registry.example/v2/ns/app/blobs",
		Lowers: []Layer{
			{File: "/l/0.commit"},
			{Dir: "/l/1", Digest: "sha256:" + "ab0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"[:64], Size: 4096},
		},
		Upper:       Upper{Index: "/u/index", Data: "/u/data"},
		ResultFile:  "/r/result",
		Download:    Download{Enable: true, Delay: 1, DelayExtra: 2, MaxMBps: 3, TryCnt: 4, BlockSize: 8192},
		HasDownload: true,
	}
	b, err := in.Encode()
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParseImageConfig(b, "")
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n in  %+v\n out %+v\n%s", in, out, b)
	}
	// Without an upper or a download object the defaults come back.
	ro := &ImageConfig{Lowers: []Layer{{File: "/a"}}, Download: DefaultDownload()}
	b, _ = ro.Encode()
	out, err = ParseImageConfig(b, "")
	if err != nil || !out.ReadOnly() || out.HasDownload || !reflect.DeepEqual(out.Download, DefaultDownload()) {
		t.Fatalf("read-only round trip: %v %+v\n%s", err, out, b)
	}
}
