// Package convert builds OverlayBD images from OCI/Docker images: each layer's tar
// is applied with OCI layer semantics to an ext4 file system (obd's own writer, no
// mount or external tool) on an LSMT writable layer stacked over the layers converted
// so far, which is then committed like overlaybd-commit -z -t.
package convert

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/obd-project/obd/ext4"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	maxPathDepth   = 1024 // components of one path
	maxLinkHops    = 255  // symlinks followed while resolving one path
	xattrPAXPrefix = "SCHILY.xattr."
	// lostFound survives whiteouts: e2fsck requires it.
	lostFound = "/lost+found"
)

// ApplyStats counts what one layer did.
type ApplyStats struct {
	Entries     int
	Bytes       int64 // regular file data
	Whiteouts   int
	SkippedXatt int // attributes in namespaces ext4 does not store
}

// applier applies one layer's tar to the file system.
type applier struct {
	w       *ext4.Writer
	created map[string]bool // paths this layer wrote (and their ancestors)
	dirs    []dirTime       // directories whose times are set after their children
	stats   ApplyStats
}

type dirTime struct {
	path string // resolved again at the end: the directory may be gone or replaced by then
	sec  int64
	nsec uint32
}

// ApplyTar applies an uncompressed layer tar to the file system w edits, with OCI
// layer semantics (see docs/convert.md). A malformed or hostile archive gives an
// error naming the entry; nothing is written outside the file system.
func ApplyTar(w *ext4.Writer, r io.Reader) (ApplyStats, error) {
	a := &applier{w: w, created: map[string]bool{}}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a.stats, fmt.Errorf("convert: reading layer tar after %d entries: %w", a.stats.Entries, err)
		}
		a.stats.Entries++
		if err := a.entry(hdr, tr); err != nil {
			return a.stats, fmt.Errorf("convert: tar entry %d %q: %w", a.stats.Entries, hdr.Name, err)
		}
	}
	for _, d := range a.dirs {
		ino, err := a.walk(d.path, false, ext4.Attr{}, false)
		if err != nil {
			continue // removed later in the layer
		}
		if isDir, err := w.IsDir(ino); err != nil || !isDir {
			continue
		}
		if err := w.SetMtime(ino, d.sec, d.nsec); err != nil {
			return a.stats, err
		}
	}
	return a.stats, nil
}

// cleanPath turns a tar name into an absolute image path; ".." may not leave the root.
func cleanPath(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", errors.New("NUL in path")
	}
	depth := 0
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
		case "..":
			if depth--; depth < 0 {
				return "", errors.New("path leaves the root with ..")
			}
		default:
			if depth++; depth > maxPathDepth {
				return "", fmt.Errorf("more than %d path components", maxPathDepth)
			}
		}
	}
	return path.Clean("/" + name), nil
}

func (a *applier) markCreated(p string) {
	for {
		if a.created[p] && p != "/" {
			return
		}
		a.created[p] = true
		if p == "/" {
			return
		}
		p = path.Dir(p)
	}
}

func (a *applier) entry(hdr *tar.Header, body io.Reader) error {
	p, err := cleanPath(hdr.Name)
	if err != nil {
		return err
	}
	base := path.Base(p)
	if base == opaqueMarker {
		a.stats.Whiteouts++
		return a.opaque(path.Dir(p))
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		a.stats.Whiteouts++
		victim := base[len(whiteoutPrefix):]
		if victim == "" || victim == "." || victim == ".." {
			return fmt.Errorf("whiteout of %q", victim)
		}
		return a.whiteout(path.Join(path.Dir(p), victim))
	}
	attr, err := a.attr(hdr)
	if err != nil {
		return err
	}
	if p == "/" {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("the root may only be a directory")
		}
		return a.updateDir("/", ext4.RootIno, attr)
	}
	parent, err := a.mkdirAll(path.Dir(p), attr)
	if err != nil {
		return err
	}
	ino, exists, err := a.w.Lookup(parent, base)
	if err != nil {
		return err
	}
	if exists {
		isDir, err := a.w.IsDir(ino)
		if err != nil {
			return err
		}
		if isDir && hdr.Typeflag == tar.TypeDir {
			a.markCreated(p)
			return a.updateDir(p, ino, attr)
		}
		if hdr.Typeflag == tar.TypeLink {
			if target, err := a.resolveLink(hdr.Linkname); err == nil && target == ino {
				a.markCreated(p)
				return nil // a link to itself: already there
			}
		}
		if err := a.w.Remove(parent, base); err != nil {
			return err
		}
	}
	a.markCreated(p)
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		if hdr.Size < 0 {
			return fmt.Errorf("size %d", hdr.Size)
		}
		a.stats.Bytes += hdr.Size
		_, err = a.w.Create(parent, base, attr, body, hdr.Size)
	case tar.TypeDir:
		if _, err = a.w.Mkdir(parent, base, attr); err == nil {
			a.dirs = append(a.dirs, dirTime{p, attr.Mtime, attr.MtimeNsec})
		}
	case tar.TypeSymlink:
		_, err = a.w.Symlink(parent, base, hdr.Linkname, attr)
	case tar.TypeLink:
		target, lerr := a.resolveLink(hdr.Linkname)
		if lerr != nil {
			return fmt.Errorf("hardlink to %q: %w", hdr.Linkname, lerr)
		}
		err = a.w.Link(parent, base, target)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		_, err = a.w.Create(parent, base, attr, nil, 0)
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	return err
}

// attr maps a tar header to inode attributes.
func (a *applier) attr(hdr *tar.Header) (ext4.Attr, error) {
	at := ext4.Attr{Mode: uint16(hdr.Mode & 0o7777), Mtime: hdr.ModTime.Unix(), MtimeNsec: uint32(hdr.ModTime.Nanosecond())}
	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) > 1<<32-1 || int64(hdr.Gid) > 1<<32-1 {
		return at, fmt.Errorf("uid %d / gid %d out of range", hdr.Uid, hdr.Gid)
	}
	at.UID, at.GID = uint32(hdr.Uid), uint32(hdr.Gid)
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeLink:
		at.Mode |= ext4.ModeRegular
	case tar.TypeDir:
		at.Mode |= ext4.ModeDir
	case tar.TypeSymlink:
		at.Mode |= ext4.ModeSymlink
	case tar.TypeChar:
		at.Mode |= ext4.ModeChar
	case tar.TypeBlock:
		at.Mode |= ext4.ModeBlock
	case tar.TypeFifo:
		at.Mode |= ext4.ModeFIFO
	}
	if hdr.Typeflag == tar.TypeChar || hdr.Typeflag == tar.TypeBlock {
		if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor >= 1<<12 || hdr.Devminor >= 1<<20 {
			return at, fmt.Errorf("device %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		at.Major, at.Minor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, xattrPAXPrefix)
		if !ok {
			continue
		}
		if !ext4.XattrSupported(name) {
			a.stats.SkippedXatt++
			continue
		}
		if at.Xattrs == nil {
			at.Xattrs = map[string][]byte{}
		}
		at.Xattrs[name] = []byte(v)
	}
	return at, nil
}

func (a *applier) updateDir(p string, ino uint32, attr ext4.Attr) error {
	if err := a.w.SetAttr(ino, attr); err != nil {
		return err
	}
	a.dirs = append(a.dirs, dirTime{p, attr.Mtime, attr.MtimeNsec})
	return nil
}

// lookupDir resolves directory path p (symlinks on the way are followed inside the
// image); with create, missing directories are made 0755 with like's owner and time.
func (a *applier) walk(p string, create bool, like ext4.Attr, followLast bool) (uint32, error) {
	ino := uint32(ext4.RootIno)
	comps := strings.Split(strings.Trim(p, "/"), "/")
	if p == "/" {
		comps = nil
	}
	var stack []uint32 // directories walked, for ".." in symlink targets
	cur := "/"
	hops := 0
	for i := 0; i < len(comps); i++ {
		c := comps[i]
		switch c {
		case "", ".":
			continue
		case "..":
			if n := len(stack); n > 0 {
				ino, stack = stack[n-1], stack[:n-1]
				cur = path.Dir(cur)
			}
			continue
		}
		if len(stack) > maxPathDepth {
			return 0, fmt.Errorf("more than %d path components", maxPathDepth)
		}
		next, ok, err := a.w.Lookup(ino, c)
		if err != nil {
			return 0, err
		}
		last := i == len(comps)-1
		if !ok {
			if !create {
				return 0, fmt.Errorf("%s: no such file or directory", path.Join(cur, c))
			}
			dirAttr := ext4.Attr{Mode: ext4.ModeDir | 0o755, Mtime: like.Mtime, MtimeNsec: like.MtimeNsec}
			if next, err = a.w.Mkdir(ino, c, dirAttr); err != nil {
				return 0, err
			}
			a.markCreated(path.Join(cur, c))
		}
		mode, err := a.w.Mode(next)
		if err != nil {
			return 0, err
		}
		if mode&0xF000 == ext4.ModeSymlink && (!last || followLast) {
			if hops++; hops > maxLinkHops {
				return 0, fmt.Errorf("%s: more than %d symlinks on the path", p, maxLinkHops)
			}
			target, err := a.w.Readlink(next)
			if err != nil {
				return 0, err
			}
			rest := append(strings.Split(target, "/"), comps[i+1:]...)
			if strings.HasPrefix(target, "/") {
				ino, stack, cur = ext4.RootIno, nil, "/"
			}
			comps, i = rest, -1
			if len(comps) > 4*maxPathDepth {
				return 0, fmt.Errorf("%s: path too long after following symlinks", p)
			}
			continue
		}
		if !last && mode&0xF000 != ext4.ModeDir {
			return 0, fmt.Errorf("%s: not a directory", path.Join(cur, c))
		}
		stack = append(stack, ino)
		ino, cur = next, path.Join(cur, c)
	}
	return ino, nil
}

func (a *applier) mkdirAll(p string, like ext4.Attr) (uint32, error) {
	ino, err := a.walk(p, true, like, true)
	if err != nil {
		return 0, err
	}
	if isDir, err := a.w.IsDir(ino); err != nil || !isDir {
		return 0, fmt.Errorf("%s is not a directory (%v)", p, err)
	}
	return ino, nil
}

// resolveLink finds a hardlink's target inode: it must exist and not be a directory.
func (a *applier) resolveLink(name string) (uint32, error) {
	p, err := cleanPath(name)
	if err != nil {
		return 0, err
	}
	ino, err := a.walk(p, false, ext4.Attr{}, false)
	if err != nil {
		return 0, err
	}
	if isDir, err := a.w.IsDir(ino); err != nil || isDir {
		return 0, fmt.Errorf("target is a directory (%v)", err)
	}
	return ino, nil
}

// whiteout deletes p unless this layer created it.
func (a *applier) whiteout(p string) error {
	if a.created[p] || p == "/" || p == lostFound {
		return nil
	}
	parent, err := a.walk(path.Dir(p), false, ext4.Attr{}, true)
	if err != nil {
		return nil // nothing below to hide
	}
	if _, ok, err := a.w.Lookup(parent, path.Base(p)); err != nil || !ok {
		return err
	}
	return a.w.Remove(parent, path.Base(p))
}

// opaque deletes every child of dir that this layer did not create.
func (a *applier) opaque(dir string) error {
	ino, err := a.walk(dir, false, ext4.Attr{}, true)
	if err != nil {
		return nil
	}
	if isDir, err := a.w.IsDir(ino); err != nil || !isDir {
		return err
	}
	names, err := a.w.Names(ino)
	if err != nil {
		return err
	}
	for _, n := range names {
		if q := path.Join(dir, n); !a.created[q] && q != lostFound {
			if err := a.w.Remove(ino, n); err != nil {
				return err
			}
		}
	}
	return nil
}
