package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An argument that names an existing file is a config file, never an image
// reference; a missing one is a reference only if it does not look like a path.
func TestClassifyAttachArg(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	os.WriteFile("ubuntu", []byte("{}"), 0o644) // a config file named like an image
	os.Mkdir("alpine", 0o755)
	for _, tc := range []struct {
		arg, cfg, ref, err string
	}{
		{arg: "ubuntu", cfg: "ubuntu"},
		{arg: "registry.example/app:v1", ref: "registry.example/app:v1"},
		{arg: "busybox", ref: "busybox"},
		{arg: "alpine", err: "alpine is a directory, not a config file; for an image reference of that name, write it with its registry"},
		{arg: "confg.v1.json", err: "config file confg.v1.json: no such file (it looks like a path"},
		{arg: "./cfg", err: "config file ./cfg: no such file"},
		{arg: filepath.Join(dir, "missing"), err: "no such file"},
		{arg: "Bad_Ref::x", err: "Bad_Ref::x: no such config file, and not an image reference"},
	} {
		cfg, ref, err := classifyAttachArg(tc.arg)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.arg, err, tc.err)
			}
			continue
		}
		if err != nil || cfg != tc.cfg || ref != tc.ref {
			t.Errorf("%s: config %q ref %q err %v, want config %q ref %q", tc.arg, cfg, ref, err, tc.cfg, tc.ref)
		}
	}
}
