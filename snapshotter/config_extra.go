package snapshotter

import (
	"fmt"
	"strings"
)

// validateExtras checks the keys ACI accepts as free-form strings and numbers, so
// that a typo fails at start instead of at the first container.
func (c *BootConfig) validateExtras(path string) error {
	if _, err := parseFsSpec("defaultFsType", c.DefaultFsType); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if _, err := parseQuota("rootfsQuota", c.RootfsQuota); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	// ACI: the TCMU HBA number (-1: its default) of this instance's devices.
	if c.Tenant < -1 {
		return fmt.Errorf("%s: tenant %d: want -1 (none) or a tenant number >= 0", path, c.Tenant)
	}
	for _, t := range c.TurboFsType {
		if t != "ext4" && t != "erofs" {
			return fmt.Errorf("%s: turboFsType %q: want ext4 or erofs (TurboOCI metas exist for those)", path, t)
		}
	}
	if e := c.Exporter; e.Enable {
		if e.Port <= 0 || e.Port > 65535 {
			return fmt.Errorf("%s: exporterConfig.port %d: want 1-65535", path, e.Port)
		}
		if !strings.HasPrefix(e.URIPrefix, "/") {
			return fmt.Errorf("%s: exporterConfig.uriPrefix %q: want a path starting with /", path, e.URIPrefix)
		}
	}
	return nil
}
