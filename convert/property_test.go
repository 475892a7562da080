package convert

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand/v2"
	"path"
	"sort"
	"strings"
	"testing"
	"time"
)

// randomLayer generates entries over a small namespace so that they collide:
// replacements, whiteouts, opaque directories, hardlinks to older files.
func randomLayer(rnd *rand.Rand, m *model, created map[string]bool, n int) []entry {
	dirs := []string{"d0", "d1", "d2"}
	var es []entry
	for len(es) < n {
		depth := 1 + rnd.IntN(3)
		var comps []string
		for range depth - 1 {
			comps = append(comps, dirs[rnd.IntN(len(dirs))])
		}
		leaves := []string{"d0", "d1", "d2", "f0", "f1", "f2", "s0"}
		comps = append(comps, leaves[rnd.IntN(len(leaves))])
		p := "/" + strings.Join(comps, "/")
		// Parents must be directories (or missing) in the model.
		ok := true
		for q := path.Dir(p); q != "/"; q = path.Dir(q) {
			if nd := m.nodes[q]; nd != nil && nd.typ != tar.TypeDir {
				ok = false
			}
		}
		if !ok {
			continue
		}
		name := p[1:]
		leaf := path.Base(p)
		mtime := time.Unix(int64(rnd.IntN(1<<31)), 0) // USTAR headers: whole seconds
		var e entry
		switch k := rnd.IntN(10); {
		case k == 0:
			e = fileE(path.Join(path.Dir(name), ".wh."+leaf), 0, nil)
		case k == 1:
			if nd := m.nodes[path.Dir(p)]; nd == nil || path.Dir(p) == "/" {
				continue
			}
			e = fileE(path.Join(path.Dir(name), ".wh..wh..opq"), 0, nil)
		case leaf[0] == 'd':
			e = entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: int64(rnd.IntN(0o1777) | 0o700), Uid: rnd.IntN(3), ModTime: mtime}}
		case leaf[0] == 's':
			e = entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: strings.Repeat("t", 1+rnd.IntN(100)), Mode: 0o777, ModTime: mtime}}
		case k == 2:
			var files []string
			for q, nd := range m.nodes {
				if (nd.typ == tar.TypeReg || nd.typ == tar.TypeLink) && q != p {
					files = append(files, q)
				}
			}
			if len(files) == 0 {
				continue
			}
			sort.Strings(files)
			e = entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: files[rnd.IntN(len(files))][1:], ModTime: mtime}}
		default:
			data := make([]byte, rnd.IntN(3)*rnd.IntN(20000))
			for i := range data {
				data[i] = byte(rnd.Uint32())
			}
			e = entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(rnd.IntN(0o7777)), Gid: rnd.IntN(3), Size: int64(len(data)), ModTime: mtime}, data: data}
			if rnd.IntN(4) == 0 {
				e.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.k": strings.Repeat("v", rnd.IntN(300))}
			}
		}
		if e.hdr.Typeflag == tar.TypeLink {
			// The model resolves the target when the entry is applied: it must still exist.
			if m.nodes["/"+e.hdr.Linkname] == nil {
				continue
			}
		}
		m.applyEntry(e, created)
		es = append(es, e)
	}
	return es
}

// Random layers converted one on another equal the model, and every prefix passes e2fsck.
func TestRandomLayers(t *testing.T) {
	for seed := range uint64(10) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 99))
			b, err := NewBuilder(Options{WorkDir: t.TempDir(), VSize: 64 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			m := newModel(t)
			var paths []string
			for i := range 4 {
				es := randomLayer(rnd, m, map[string]bool{}, 60)
				l, err := b.AddLayer(bytes.NewReader(makeTar(t, es)), "")
				if err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
				paths = append(paths, l.Path)
				img := stack(t, paths)
				m.check(img, img.Size())
				fsck(t, img)
			}
		})
	}
}
