// Package snapshotter is a containerd snapshotter that keeps the contract of the
// overlaybd snapshotter of containerd/accelerated-container-image (ACI): its config
// keys, on-disk layout, labels and mount shapes (docs/containerd.md), with devices
// served by obd's own device manager.
package snapshotter

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// DefaultConfigPath is where ACI's snapshotter reads its config.
const DefaultConfigPath = "/etc/overlaybd-snapshotter/config.json"

// Registry is a mirrorRegistry entry.
type Registry struct {
	Host     string `json:"host"`
	Insecure bool   `json:"insecure"`
}

// ExporterConfig is the Prometheus exporter of the snapshotter's own metrics (metrics.go).
type ExporterConfig struct {
	Enable    bool   `json:"enable"`
	URIPrefix string `json:"uriPrefix"`
	Port      int    `json:"port"`
}

// BootConfig is ACI's config.json.
type BootConfig struct {
	AsyncRemove       bool           `json:"asyncRemove"`
	Address           string         `json:"address"`
	Root              string         `json:"root"`
	LogLevel          string         `json:"verbose"`
	LogReportCaller   bool           `json:"logReportCaller"`
	RwMode            string         `json:"rwMode"` // overlayfs, dir or dev
	AutoRemoveDev     bool           `json:"autoRemoveDev"`
	Exporter          ExporterConfig `json:"exporterConfig"`
	WritableLayerType string         `json:"writableLayerType"` // append or sparse
	MirrorRegistry    []Registry     `json:"mirrorRegistry"`
	DefaultFsType     string         `json:"defaultFsType"`
	RootfsQuota       string         `json:"rootfsQuota"`
	Tenant            int            `json:"tenant"`
	TurboFsType       []string       `json:"turboFsType"`
	RuntimeType       string         `json:"runtimeType"`
}

// DefaultBootConfig returns ACI's defaults.
func DefaultBootConfig() *BootConfig {
	return &BootConfig{
		Address:           "/run/overlaybd-snapshotter/overlaybd.sock",
		Root:              "/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd",
		LogLevel:          "info",
		RwMode:            RwOverlayFS,
		Exporter:          ExporterConfig{URIPrefix: "/metrics", Port: 9863},
		WritableLayerType: "append",
		DefaultFsType:     "ext4",
		Tenant:            -1,
		TurboFsType:       []string{"erofs", "ext4"},
		RuntimeType:       "containerd",
	}
}

// Writable-layer modes (rwMode, or the label containerd.io/snapshot/overlaybd.writable).
const (
	RwOverlayFS = "overlayfs"
	RwDir       = "dir"
	RwDev       = "dev"
)

// LoadBootConfig reads path over the defaults; a missing file gives the defaults.
func LoadBootConfig(path string) (*BootConfig, error) {
	c := DefaultBootConfig()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, c.validate(path)
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, c.validate(path)
}

func (c *BootConfig) validate(path string) error {
	switch c.RwMode {
	case RwOverlayFS, RwDir, RwDev:
	default:
		return fmt.Errorf("%s: rwMode %q: want overlayfs, dir or dev", path, c.RwMode)
	}
	switch c.WritableLayerType {
	case "append", "sparse":
	default:
		return fmt.Errorf("%s: writableLayerType %q: want append or sparse", path, c.WritableLayerType)
	}
	if c.Root == "" {
		return fmt.Errorf("%s: root is empty", path)
	}
	if c.Address == "" {
		return fmt.Errorf("%s: address is empty", path)
	}
	return c.validateExtras(path)
}
