package daemon

import "github.com/obd-project/obd/daemon/api"

// The API types live in daemon/api, which clients import without the daemon;
// these names keep the daemon's own code and its older callers short.
type (
	Frontend      = api.Frontend
	TraceOptions  = api.TraceOptions
	AttachRequest = api.AttachRequest
	ImageRequest  = api.ImageRequest
	DetachRequest = api.DetachRequest
	ErrorBody     = api.ErrorBody
	Record        = api.Record
	Status        = api.Status
	Client        = api.Client
)

const (
	DefaultSocket = api.DefaultSocket
	FUSEImageName = api.FUSEImageName

	FrontendAuto = api.FrontendAuto
	FrontendUblk = api.FrontendUblk
	FrontendFUSE = api.FrontendFUSE

	StateLive   = api.StateLive
	StateFailed = api.StateFailed

	TraceRecoveryReplayed = api.TraceRecoveryReplayed
	TraceRecoveryResumed  = api.TraceRecoveryResumed
	TraceRecoveryDone     = api.TraceRecoveryDone
	TraceRecoveryLost     = api.TraceRecoveryLost
	TraceRecoveryFailed   = api.TraceRecoveryFailed
)

// NewClient returns a client of the daemon listening on socket (api.NewClient).
func NewClient(socket string) *Client { return api.NewClient(socket) }

// ParseFrontend validates a --frontend value (api.ParseFrontend).
func ParseFrontend(s string) (Frontend, error) { return api.ParseFrontend(s) }
