// Package api is the obd daemon's API: the request and response types of its
// unix-socket HTTP API and a Client. The CLI, overlaybd-attach and the containerd
// snapshotter import it without the daemon (no image, device or cache code).
package api

import (
	"fmt"
	"time"

	"github.com/obd-project/obd/download"
)

// DefaultSocket is where `obd daemon` listens and the CLI connects.
const DefaultSocket = "/run/obd/obd.sock"

// Frontend is how a device reaches the kernel.
type Frontend string

const (
	FrontendAuto Frontend = "auto" // ublk when /dev/ublk-control exists, else FUSE
	FrontendUblk Frontend = "ublk" // /dev/ublkbN
	FrontendFUSE Frontend = "fuse" // a regular file on a FUSE mount, for `mount -o loop`
)

// ParseFrontend validates a --frontend value.
func ParseFrontend(s string) (Frontend, error) {
	switch f := Frontend(s); f {
	case "", FrontendAuto:
		return FrontendAuto, nil
	case FrontendUblk, FrontendFUSE:
		return f, nil
	}
	return "", fmt.Errorf("frontend %q: want auto, ublk or fuse", s)
}

// FUSEImageName is the name of the image file inside a FUSE device's mount directory.
const FUSEImageName = "image"

// TraceOptions are run-time trace files of one attach (`obd attach --record-trace
// / --prefetch`), used in addition to the config's recordTracePath and
// acceleration layer, with no image rebuild.
type TraceOptions struct {
	RecordTrace string `json:"recordTrace,omitempty"` // record the reads of this attach into this file
	Prefetch    string `json:"prefetch,omitempty"`    // replay this trace while serving
}

// AttachRequest is the body of POST /v1/attach.
type AttachRequest struct {
	Config   string   `json:"config"`
	Frontend Frontend `json:"frontend,omitempty"`
	TraceOptions
}

// ImageRequest attaches an image by reference instead of by config file (POST
// /v1/attach-image).
type ImageRequest struct {
	Ref string `json:"ref"`
	// Upper is a directory for a writable layer (data + index files, created on the
	// first attach with the image's size); empty: read-only.
	Upper    string   `json:"upper,omitempty"`
	Frontend Frontend `json:"frontend,omitempty"`
	TraceOptions
}

// DetachRequest is the body of POST /v1/detach: a device id or path.
type DetachRequest struct {
	Device string `json:"device"`
	Force  bool   `json:"force,omitempty"` // detach even if mounted
}

// ErrorBody is the body of every failed call.
type ErrorBody struct {
	Error string `json:"error"`
}

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

// The states of Status.State.
const (
	// StateLive is a device being served.
	StateLive = "live"
	// StateFailed is a recorded device that the daemon could not serve again at
	// its start (Record.RestoreError says why).
	StateFailed = "failed"
)

// Status is one device as `obd list` shows it.
type Status struct {
	Record
	State        string `json:"state"` // StateLive or StateFailed
	BytesRead    int64  `json:"bytesRead"`
	BytesWritten int64  `json:"bytesWritten"`
	ReadErrors   int64  `json:"readErrors"`
	WriteErrors  int64  `json:"writeErrors"`
	Size         int64  `json:"size"`
	ReadOnly     bool   `json:"readOnly"`
	// Downloads is the background download of each remote layer (download.enable).
	Downloads []download.Status `json:"downloads,omitempty"`
	// Warnings are the config's unknown keys (at attach only).
	Warnings []string `json:"warnings,omitempty"`
}
