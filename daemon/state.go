package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/obd-project/obd/internal/atomicfile"
)

type stateDir string

func (d stateDir) path(id int) string {
	return filepath.Join(string(d), "dev-"+strconv.Itoa(id)+".json")
}

func (d stateDir) save(r Record) error {
	if d == "" {
		return nil
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(d.path(r.ID), b, 0o600); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

func (d stateDir) remove(id int) error {
	if d == "" {
		return nil
	}
	err := os.Remove(d.path(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// load returns every readable record; unreadable files are reported and skipped.
func (d stateDir) load() ([]Record, []error) {
	if d == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(string(d))
	if err != nil {
		return nil, []error{err}
	}
	var recs []Record
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "dev-") || !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(string(d), name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var r Record
		if err := json.Unmarshal(b, &r); err != nil {
			errs = append(errs, fmt.Errorf("state file %s: %w", name, err))
			os.Remove(filepath.Join(string(d), name))
			continue
		}
		recs = append(recs, r)
	}
	return recs, errs
}
