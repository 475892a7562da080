package blockdev

import (
	"errors"
	"fmt"
	"sync"
)

// Unwrapper is implemented by a wrapper Target (a decorator that counts, logs or
// traces) to expose the Target it wraps, as errors.Unwrap and
// http.ResponseController do. The capability helpers (CapsOf, Discard, WriteZeroes,
// IsReadOnly) follow it, so a wrapper implements only the methods it intercepts and
// still shows its inner target's real capabilities:
//   - an optional method the wrapper lacks is found on the inner target (and the
//     wrapper is bypassed for it);
//   - an optional method the wrapper has is used only if the inner target has the
//     capability too (a wrapper with Unwrap forwards, it never adds a capability).
//
// A wrapper that changes offsets or data (a partition, an encryption layer) must not
// implement Unwrap: bypassing it would be wrong.
type Unwrapper interface {
	Unwrap() Target
}

// Caps are the optional capabilities of a Target, after unwrapping.
type Caps struct {
	ReadOnly    bool // writes, discards and write-zeroes fail with ErrReadOnly
	Discard     bool // Discard drops a range
	WriteZeroes bool // WriteZeroes has a native path (else Discard, else zero WriteAt)
}

// CapsOf reports t's capabilities. Frontends resolve them once, at start-up, to choose
// device parameters (ublk advertises discard only when Caps.Discard).
func CapsOf(t Target) Caps {
	return Caps{ReadOnly: IsReadOnly(t), Discard: discarderOf(t) != nil, WriteZeroes: zeroWriterOf(t) != nil}
}

// IsReadOnly reports whether t (or the target it wraps) declares itself read-only.
func IsReadOnly(t Target) bool {
	for {
		if r, ok := t.(ReadOnlyer); ok {
			return r.ReadOnly()
		}
		u, ok := t.(Unwrapper)
		if !ok {
			return false
		}
		t = u.Unwrap()
	}
}

// Discard drops [off, off+n) of t: the range reads as zeros afterwards. It returns
// errors.ErrUnsupported (wrapped) if t cannot discard and ErrReadOnly if t is
// read-only. A zero-length discard inside the device is a no-op.
func Discard(t Target, off, n int64) error {
	if err := checkRange("discard", t, off, n); err != nil {
		return err
	}
	if IsReadOnly(t) {
		return ErrReadOnly
	}
	d := discarderOf(t)
	if d == nil {
		return fmt.Errorf("blockdev: discard: %w", errors.ErrUnsupported)
	}
	if n == 0 {
		return nil
	}
	return d.Discard(off, n)
}

// WriteZeroes makes [off, off+n) of t read as zeros with the cheapest capability t
// has, in this order: its ZeroWriter, its Discarder (a discarded range reads as
// zeros), then WriteAt of a zero buffer (through t itself, so wrappers see the
// writes). It returns ErrReadOnly if t is read-only.
func WriteZeroes(t Target, off, n int64) error {
	if err := checkRange("write-zeroes", t, off, n); err != nil {
		return err
	}
	if IsReadOnly(t) {
		return ErrReadOnly
	}
	if n == 0 {
		return nil
	}
	if z := zeroWriterOf(t); z != nil {
		return z.WriteZeroes(off, n)
	}
	if d := discarderOf(t); d != nil {
		return d.Discard(off, n)
	}
	zeros := zeroChunk()
	for n > 0 {
		c := min(n, int64(len(zeros)))
		if _, err := t.WriteAt(zeros[:c], off); err != nil {
			return err
		}
		off, n = off+c, n-c
	}
	return nil
}

// zeroChunk is the source of fallback zero writes; WriteAt never modifies its
// buffer. Allocated on first use: every obd command links this package.
var zeroChunk = sync.OnceValue(func() []byte { return make([]byte, 256<<10) })

func checkRange(op string, t Target, off, n int64) error {
	if off < 0 || n < 0 || off > t.Size() || n > t.Size()-off {
		return fmt.Errorf("blockdev: %s [%d, +%d) outside the device (size %d)", op, off, n, t.Size())
	}
	return nil
}

// discarderOf returns the Discarder that serves t's discards, or nil.
func discarderOf(t Target) Discarder { d, _ := capability[Discarder](t); return d }

// zeroWriterOf returns the ZeroWriter that serves t's write-zeroes, or nil.
func zeroWriterOf(t Target) ZeroWriter { z, _ := capability[ZeroWriter](t); return z }

// capability finds the implementation of the optional interface C that serves t,
// following Unwrapper: a wrapper's own method counts only if its inner target has
// the capability too (see Unwrapper).
func capability[C any](t Target) (C, bool) {
	c, has := t.(C)
	u, wraps := t.(Unwrapper)
	switch {
	case !wraps:
		return c, has
	case !has:
		return capability[C](u.Unwrap())
	}
	if _, inner := capability[C](u.Unwrap()); inner {
		return c, true
	}
	var none C
	return none, false
}
