package lsmt

import (
	"crypto/rand"
	"fmt"
)

// UUID is photon's UUID: 16 raw bytes whose string form is the bytes in memory order,
// hex, UPPERCASE, 8-4-4-4-12. The zero value is the null UUID.
type UUID [16]byte

// uuidStringLen is the length of the string form, without the NUL the header stores.
const uuidStringLen = 36

// String returns the 36-character uppercase form.
func (u UUID) String() string {
	var b [uuidStringLen]byte
	const hexd = "0123456789ABCDEF"
	j := 0
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b[j] = '-'
			j++
		}
		b[j] = hexd[c>>4]
		b[j+1] = hexd[c&15]
		j += 2
	}
	return string(b[:])
}

// IsNull reports whether u is the null (all-zero) UUID.
func (u UUID) IsNull() bool { return u == UUID{} }

// ParseUUID parses the 8-4-4-4-12 form; hex digits may be either case and the string
// must be exactly 36 characters, as photon's UUID::parse requires.
func ParseUUID(s string) (UUID, error) {
	u, ok := parseUUID(s)
	if !ok {
		return u, fmt.Errorf("lsmt: uuid %q: want 8-4-4-4-12 hex digits (36 characters)", s)
	}
	return u, nil
}

func parseUUID(s string) (UUID, bool) {
	var u UUID
	if len(s) != uuidStringLen {
		return u, false
	}
	j := 0
	for i := 0; i < 16; i++ {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			if s[j] != '-' {
				return UUID{}, false
			}
			j++
		}
		hi, ok1 := unhex(s[j])
		lo, ok2 := unhex(s[j+1])
		if !ok1 || !ok2 {
			return UUID{}, false
		}
		u[i] = hi<<4 | lo
		j += 2
	}
	return u, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// NewRandomUUID returns a random (version 4) UUID, as overlaybd-create gives a new
// writable layer.
func NewRandomUUID() (UUID, error) {
	var u UUID
	if _, err := rand.Read(u[:]); err != nil {
		return u, err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}
