// Package blobio is the vocabulary of reads of layer blobs that may be remote:
// the intent each read carries (passed explicitly, never in a context value),
// the read method that takes it, and eviction for the ZFile reader's
// self-healing. It is a leaf: format, cache, registry, P2P and image code all
// import it, and it imports none of them.
//
// The path of a remote read (docs/ARCHITECTURE.md, "The remote read path"):
// image (swapBlob, openLog) → remote (cachedBlob) → cache.Blob → cache.Source
// (registry.Blob, or p2p.Source in peer mode) → registry.DataProxy (p2p.Proxy).
// Every hop takes the Intent as an argument and hands it on.
package blobio

import (
	"context"
	"errors"
	"io"
)

// Priority is how urgent a read is; the Dragonfly proxy sends it as
// X-Dragonfly-Priority (p2p.ProxyOptions).
type Priority int

const (
	OnDemand Priority = iota // a reader is waiting (the default)
	Prefetch                 // trace replay, pull, background download, read-ahead
)

// Intent says what a read is for. The zero value is a device read: on demand,
// and the cache may read ahead of it.
type Intent struct {
	Priority Priority
	// Exact: the caller knows what it wants (an open's head and tail, trace
	// replay, pull, the peer server): the cache starts no read-ahead for it.
	Exact bool
}

// The intents of the read path's callers.
var (
	Demand     = Intent{}                                // device reads
	Exact      = Intent{Exact: true}                     // an open's head and tail, peer serving
	Background = Intent{Priority: Prefetch, Exact: true} // trace replay, pull, background download
	ReadAhead  = Intent{Priority: Prefetch}              // the cache's read-ahead fills
)

// Reader is a blob read with an explicit intent: ctx bounds the read (its
// cancellation ends it), in says what it is for. A Reader that has no use for
// the intent (a local file, a peer) ignores it.
type Reader interface {
	ReadAtIntent(ctx context.Context, in Intent, p []byte, off int64) (int, error)
	Size() int64
}

// Evicter drops [off, off+n) from a cache so that the next read fetches those
// bytes again (zfile.Evicter): the ZFile reader calls it for a block that fails
// its CRC. ErrNotEvictable (wrapped or not) says a re-read cannot help.
type Evicter interface {
	Evict(off, n int64) error
}

// ErrNotEvictable: the reader has no cache to drop bytes from, so a re-read would
// return the same bytes.
var ErrNotEvictable = errors.New("blob cannot evict: a re-read would return the same bytes")

// Evict evicts [off, off+n) of r if r is an Evicter, else returns ErrNotEvictable:
// the one place that looks for the capability, for wrappers over a plain
// io.ReaderAt (tarwrap.Payload), which thus always have Evict and forward it.
func Evict(r io.ReaderAt, off, n int64) error {
	if ev, ok := r.(Evicter); ok {
		return ev.Evict(off, n)
	}
	return ErrNotEvictable
}

// View is R read with the intent In, for code that takes an io.ReaderAt (the
// format readers): the intent is fixed where the view is made. It forwards Evict
// to R.
type View struct {
	R interface {
		Reader
		Evicter
	}
	In Intent
}

// ReadAt reads with the view's intent.
func (v View) ReadAt(p []byte, off int64) (int, error) {
	return v.R.ReadAtIntent(context.Background(), v.In, p, off)
}

// Size is R's size.
func (v View) Size() int64 { return v.R.Size() }

// Evict forwards to R.
func (v View) Evict(off, n int64) error { return v.R.Evict(off, n) }
