package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// object is one JSON object with its members in document order. Like rapidjson's
// FindMember, a duplicated member name resolves to its first occurrence.
type object struct {
	path    string // field path of this object for error messages ("" = root)
	members map[string]json.RawMessage
	order   []string // member names in document order, first occurrences only
}

// parseObject decodes raw (which must be valid JSON) as an object. path names the
// object in errors, e.g. "lowers[2]".
func parseObject(raw json.RawMessage, path string) (*object, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", orRoot(path), err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("%s: want a JSON object, found %s", orRoot(path), kind(raw))
	}
	o := &object{path: path, members: map[string]json.RawMessage{}}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", orRoot(path), err)
		}
		name, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s: %w", o.field(name), err)
		}
		if _, dup := o.members[name]; !dup {
			o.members[name] = v
			o.order = append(o.order, name)
		}
	}
	return o, nil
}

func orRoot(path string) string {
	if path == "" {
		return "(root)"
	}
	return path
}

// kind names the JSON type of raw for "want X, found Y" messages.
func kind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "number " + string(raw)
	}
}

func (o *object) field(name string) string {
	if o.path == "" {
		return name
	}
	return o.path + "." + name
}

// lookup returns the member's raw value; a missing or null member is absent, so it
// keeps its default (Go writers such as the snapshotter emit null for empty slices).
func (o *object) lookup(name string) (json.RawMessage, bool) {
	v, ok := o.members[name]
	if !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		return nil, false
	}
	return v, true
}

func (o *object) has(name string) bool {
	_, ok := o.lookup(name)
	return ok
}

func (o *object) str(name string, dst *string) error {
	v, ok := o.lookup(name)
	if !ok {
		return nil
	}
	if err := json.Unmarshal(v, dst); err != nil {
		return fmt.Errorf("%s: want a string, found %s", o.field(name), kind(v))
	}
	return nil
}

func (o *object) boolean(name string, dst *bool) error {
	v, ok := o.lookup(name)
	if !ok {
		return nil
	}
	if err := json.Unmarshal(v, dst); err != nil {
		return fmt.Errorf("%s: want true or false, found %s", o.field(name), kind(v))
	}
	return nil
}

// integer reads an integer member within [lo, hi]; rapidjson's Get<int>/Get<uint32_t>
// only accept integers that fit the C++ type, so fractions and overflows are errors.
func (o *object) integer(name string, lo, hi int64, dst *int64) error {
	v, ok := o.lookup(name)
	if !ok {
		return nil
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
	if err != nil || n < lo || n > hi {
		return fmt.Errorf("%s: want an integer in [%d, %d], found %s", o.field(name), lo, hi, kind(v))
	}
	*dst = n
	return nil
}

func (o *object) int32(name string, dst *int) error {
	n := int64(*dst)
	if err := o.integer(name, math.MinInt32, math.MaxInt32, &n); err != nil {
		return err
	}
	*dst = int(n)
	return nil
}

func (o *object) uint32(name string, dst *uint32) error {
	n := int64(*dst)
	if err := o.integer(name, 0, math.MaxUint32, &n); err != nil {
		return err
	}
	*dst = uint32(n)
	return nil
}

func (o *object) uint64(name string, dst *uint64) error {
	v, ok := o.lookup(name)
	if !ok {
		return nil
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
	if err != nil {
		return fmt.Errorf("%s: want an unsigned integer, found %s", o.field(name), kind(v))
	}
	*dst = n
	return nil
}

// child returns the member as an object, or nil when absent.
func (o *object) child(name string) (*object, error) {
	v, ok := o.lookup(name)
	if !ok {
		return nil, nil
	}
	return parseObject(v, o.field(name))
}

// array returns the member's elements, or nil when absent.
func (o *object) array(name string) ([]json.RawMessage, error) {
	v, ok := o.lookup(name)
	if !ok {
		return nil, nil
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(v, &elems); err != nil {
		return nil, fmt.Errorf("%s: want an array, found %s", o.field(name), kind(v))
	}
	return elems, nil
}

// strings returns the member as an array of strings, or nil when absent.
func (o *object) strings(name string) ([]string, error) {
	elems, err := o.array(name)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(elems))
	for i, v := range elems {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, fmt.Errorf("%s[%d]: want a string, found %s", o.field(name), i, kind(v))
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// firstErr returns the first non-nil error, so field reads can be listed in order.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
