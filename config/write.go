package config

import "encoding/json"

// Encode renders c as a config.v1.json the reference daemon also reads (reference
// member names; empty members omitted, so their defaults apply).
func (c *ImageConfig) Encode() ([]byte, error) {
	type lower struct {
		File         string `json:"file,omitempty"`
		Dir          string `json:"dir,omitempty"`
		Digest       string `json:"digest,omitempty"`
		Size         uint64 `json:"size,omitempty"`
		TargetFile   string `json:"targetFile,omitempty"`
		TargetDigest string `json:"targetDigest,omitempty"`
		GzipIndex    string `json:"gzipIndex,omitempty"`
	}
	type upper struct {
		Index     string `json:"index,omitempty"`
		Data      string `json:"data,omitempty"`
		Target    string `json:"target,omitempty"`
		GzipIndex string `json:"gzipIndex,omitempty"`
	}
	type download struct {
		Enable     bool   `json:"enable"`
		Delay      int    `json:"delay"`
		DelayExtra int    `json:"delayExtra"`
		MaxMBps    int    `json:"maxMBps"`
		TryCnt     int    `json:"tryCnt"`
		BlockSize  uint32 `json:"blockSize"`
	}
	doc := struct {
		RepoBlobURL       string    `json:"repoBlobUrl,omitempty"`
		Lowers            []lower   `json:"lowers"`
		Upper             *upper    `json:"upper,omitempty"`
		ResultFile        string    `json:"resultFile,omitempty"`
		Download          *download `json:"download,omitempty"`
		AccelerationLayer bool      `json:"accelerationLayer,omitempty"`
		RecordTracePath   string    `json:"recordTracePath,omitempty"`
	}{RepoBlobURL: c.RepoBlobURL, Lowers: []lower{}, ResultFile: c.ResultFile,
		AccelerationLayer: c.AccelerationLayer, RecordTracePath: c.RecordTracePath}
	for _, l := range c.Lowers {
		doc.Lowers = append(doc.Lowers, lower(l))
	}
	if c.Upper != (Upper{}) {
		u := upper(c.Upper)
		doc.Upper = &u
	}
	if c.HasDownload {
		d := download(c.Download)
		doc.Download = &d
	}
	return json.MarshalIndent(doc, "", "  ")
}
