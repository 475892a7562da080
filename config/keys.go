package config

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// keys is the set of member names an object may hold. A nil value is a leaf (any
// JSON value); an object value lists the members of a nested object; the member
// elemKey describes the elements of an array of objects.
type keys map[string]keys

const elemKey = "[]"

// imageKeys are config.v1.json's members: the reference's ImageConfig (src/config.h).
var imageKeys = keys{
	"repoBlobUrl": nil,
	"lowers": {elemKey: {
		"file": nil, "dir": nil, "digest": nil, "size": nil,
		"targetFile": nil, "targetDigest": nil, "gzipIndex": nil,
	}},
	"upper":             {"index": nil, "data": nil, "target": nil, "gzipIndex": nil},
	"resultFile":        nil,
	"download":          downloadKeys,
	"accelerationLayer": nil,
	"recordTracePath":   nil,
}

var downloadKeys = keys{"enable": nil, "delay": nil, "delayExtra": nil, "maxMBps": nil, "tryCnt": nil, "blockSize": nil}

// globalKeys are overlaybd.json's members: the reference's GlobalConfig
// (src/config.h) plus obd's own (documented in docs/usage.md).
var globalKeys = keys{
	"registryCacheDir": nil, "credentialFilePath": nil, "registryCacheSizeGB": nil, "ioEngine": nil,
	"cacheType": nil, "logLevel": nil, "logPath": nil, "enableAudit": nil, "enableThread": nil,
	"auditPath": nil, "registryFsVersion": nil, "userAgent": nil,
	"download": downloadKeys,
	"credentialConfig": {"mode": nil, "path": nil, "timeout": nil,
		"client_cert_path": nil, "client_key_path": nil, "server_ca_path": nil},
	"p2pConfig": {"enable": nil, "address": nil,
		// obd's
		"mode": nil, "peers": nil, "peersFile": nil, "token": nil, "tokenFile": nil, "listen": nil,
		"advertise": nil, "fanOut": nil, "tlsCert": nil, "tlsKey": nil, "tlsCA": nil, "allowInsecureProxy": nil},
	"exporterConfig":  {"enable": nil, "uriPrefix": nil, "port": nil, "updateInterval": nil},
	"cacheConfig":     {"cacheType": nil, "cacheDir": nil, "cacheSizeGB": nil, "refillSize": nil, "blockSize": nil},
	"gzipCacheConfig": {"enable": nil, "cacheDir": nil, "cacheSizeGB": nil, "refillSize": nil},
	"logConfig":       {"logLevel": nil, "logPath": nil, "logSizeMB": nil, "logRotateNum": nil},
	"prefetchConfig":  {"concurrency": nil},
	"certConfig":      {"certFile": nil, "keyFile": nil, "caFile": nil},
	"serviceConfig":   {"enable": nil, "address": nil},
	// obd's
	"downloadDirSizeGB":  nil,
	"insecureRegistries": nil,
	"mirrorRegistry":     {elemKey: {"host": nil, "insecure": nil, "mirrors": nil}},
}

// unknownKeys returns one warning per member of raw (a valid JSON document) that
// ks does not list, in document order, each with the nearest known name when one
// is close. Members of the wrong type are left to the parser, which names them.
func unknownKeys(raw json.RawMessage, ks keys) []string {
	var out []string
	walkKeys(raw, "", ks, &out)
	return out
}

func walkKeys(raw json.RawMessage, path string, ks keys, out *[]string) {
	o, err := parseObject(raw, path)
	if err != nil {
		return
	}
	for _, name := range o.order {
		sub, known := ks[name]
		if !known {
			w := fmt.Sprintf("unknown key %q", o.field(name))
			if s := nearestKey(name, ks); s != "" {
				w += fmt.Sprintf(" (did you mean %q?)", o.field(s))
			}
			*out = append(*out, w+": ignored")
			continue
		}
		v, ok := o.lookup(name)
		if !ok || sub == nil {
			continue
		}
		if elem, isArray := sub[elemKey]; isArray {
			var elems []json.RawMessage
			if json.Unmarshal(v, &elems) != nil {
				continue
			}
			for i, e := range elems {
				walkKeys(e, fmt.Sprintf("%s[%d]", o.field(name), i), elem, out)
			}
			continue
		}
		walkKeys(v, o.field(name), sub, out)
	}
}

// nearestKey returns the known name closest to name: equal but for case, or
// within an edit distance of a third of its length (at least 2). "" if none.
func nearestKey(name string, ks keys) string {
	names := make([]string, 0, len(ks))
	for k := range ks {
		if k != elemKey {
			names = append(names, k)
		}
	}
	sort.Strings(names) // ties resolve the same way every run
	best, bestDist := "", max(2, len(name)/3)+1
	for _, k := range names {
		if strings.EqualFold(k, name) {
			return k
		}
		if d := editDistance(strings.ToLower(name), strings.ToLower(k)); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b (bytes; keys are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
