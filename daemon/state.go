package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/obd-project/obd/internal/atomicfile"
)

// Record is what the daemon keeps about a device in its state directory, one JSON
// file per device, so that a restarted daemon can find and recover its devices.
type Record struct {
	ID       int       `json:"id"`
	Config   string    `json:"config"` // absolute path of the config.v1.json
	Frontend Frontend  `json:"frontend"`
	Path     string    `json:"path"`               // /dev/ublkbN or the FUSE image file
	MountDir string    `json:"mountDir,omitempty"` // FUSE mount point
	Recovery bool      `json:"recovery,omitempty"` // ublk device created with user recovery
	PID      int       `json:"pid"`                // the serving process
	Created  time.Time `json:"created"`
	// The run-time trace options of the attach, restarted when the device is
	// recovered; TraceRecovery (one of the TraceRecovery* words) and TraceNote say
	// what the last recovery did with them.
	TraceOptions
	TraceRecovery string `json:"traceRecovery,omitempty"`
	TraceNote     string `json:"traceNote,omitempty"`

	// PIDStart is the serving process's start time (clock ticks after boot,
	// /proc/PID/stat field 22): a live process with PID but another start
	// time took over a recycled PID, and the device still needs recovery.
	PIDStart uint64 `json:"pidStart,omitempty"`
	// RestoreError says why the last daemon start could not serve the device
	// again; `obd list` shows it as state "failed" until it is detached.
	RestoreError string `json:"restoreError,omitempty"`
}

// What a recovery did with a device's run-time trace.
const (
	TraceRecoveryReplayed = "replayed"      // a prefetch replays again
	TraceRecoveryResumed  = "resumed"       // a recording goes on, without the reads before the restart
	TraceRecoveryDone     = "done"          // the recording was dumped before the restart
	TraceRecoveryLost     = "lost"          // the lock was deleted while no daemon ran: no trace written
	TraceRecoveryFailed   = "not restarted" // the trace could not be started again (see the note)
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
