// Package daemon owns the devices of one host: it assembles configs into images,
// serves them through a frontend (ublk or FUSE), keeps a record of each device in a
// state directory, and recovers its ublk devices after a crash. The same Manager
// serves `obd daemon` (behind a unix-socket API) and `obd attach --foreground`.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/obd-project/obd/config"
	"github.com/obd-project/obd/download"
	"github.com/obd-project/obd/image"
	"github.com/obd-project/obd/internal/proc"
	"github.com/obd-project/obd/trace"
	"github.com/obd-project/obd/ublk"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// Options configure a Manager.
type Options struct {
	// StateDir keeps one record per device ("" = no records: a foreground attach).
	StateDir string
	// RunDir holds FUSE mount points (default /run/obd).
	RunDir string
	// Global is the daemon config (overlaybd.json); nil = defaults.
	Global *config.GlobalConfig
	// Remote opens remote layer blobs; nil = local layers only.
	Remote image.RemoteOpener
	// Resolver turns image references into configs (AttachImage); nil = no references.
	Resolver Resolver
	// NoRecovery creates ublk devices without user recovery.
	NoRecovery bool
	Logger     *zap.Logger
	// Collectors are other packages' metrics (registry, cache, P2P) served with
	// the manager's.
	Collectors []prometheus.Collector
	// Download overrides the configs' download timing (tests); nil: the configs'.
	Download *download.Options
	// LayerDirsBytes bounds the download layer directories of images attached by
	// reference (0: Global.DownloadDirBytes()).
	LayerDirsBytes int64
}

// Manager owns a set of devices. It is safe for concurrent use: attaches run in
// parallel and hold the lock only to reserve an id.
type Manager struct {
	opts  Options
	state stateDir
	lg    *zap.Logger
	ioLog *zap.Logger // rate-limited, for I/O errors returned to devices

	metrics *metrics
	// dl paces every background download of this daemon (maxMBps over all layers).
	dl *download.Limiter

	mu      sync.Mutex
	devices map[int]*device
	failed  map[int]Record // recorded devices that Restore could not serve
	pending map[int]bool   // ids reserved by attaches in progress
	dirRefs map[string]int // layer directories in use by this daemon's devices

	pruneMu sync.Mutex // one PruneLayerDirs at a time

	// stopping refuses new attaches once Stop began (under mu).
	stopping bool
	// fuseRoot holds this manager's FUSE mount points; runLock is the daemon's
	// lock on the run dir (see claimRunDir).
	fuseRoot string
	runLock  *os.File
}

type device struct {
	rec    Record
	img    *image.Image
	target *countingTarget
	srv    served
	dirs   []string // its layer directories under layersDir
}

// NewManager prepares the state and run directories.
func NewManager(opts Options) (*Manager, error) {
	if opts.RunDir == "" {
		opts.RunDir = "/run/obd"
	}
	if opts.Logger == nil {
		opts.Logger = zap.L()
	}
	if opts.Global == nil {
		opts.Global = config.DefaultGlobalConfig()
	}
	for _, d := range []string{opts.StateDir, opts.RunDir} {
		if d != "" {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return nil, err
			}
		}
	}
	m := &Manager{opts: opts, state: stateDir(opts.StateDir), lg: opts.Logger, ioLog: ioErrorLogger(opts.Logger), metrics: newMetrics(),
		dl: download.NewLimiter(float64(opts.Global.Download.MaxMBps) * (1 << 20)), devices: map[int]*device{}, failed: map[int]Record{}, pending: map[int]bool{}, dirRefs: map[string]int{}}
	if err := m.claimRunDir(); err != nil {
		return nil, err
	}
	return m, nil
}

// reserveID picks the smallest id that no device of ours, no attach in progress, no
// state record and no kernel ublk device uses, so /dev/ublkbN has N = id.
func (m *Manager) reserveID() (int, error) {
	used := map[int]bool{}
	if infos, err := ublk.List(); err == nil {
		for _, in := range infos {
			used[int(in.ID)] = true
		}
	}
	recs, _ := m.state.load()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping {
		return 0, errors.New("the daemon is stopping: no new devices")
	}
	for _, r := range recs {
		used[r.ID] = true
	}
	for id := 0; id < 1<<20; id++ {
		if !used[id] && m.devices[id] == nil && !m.pending[id] {
			m.pending[id] = true
			return id, nil
		}
	}
	return 0, errors.New("no free device id")
}

func (m *Manager) release(id int) {
	m.mu.Lock()
	delete(m.pending, id)
	m.mu.Unlock()
}

func (m *Manager) imageOptions(t TraceOptions, holder string) image.Options {
	return image.Options{Remote: m.opts.Remote, Logger: m.lg, PrefetchConcurrency: m.opts.Global.PrefetchConcurrency,
		RecordTrace: t.RecordTrace, ReplayTrace: t.Prefetch, DownloadLimiter: m.dl, Download: m.opts.Download, Holder: holder}
}

// Attach assembles the config at configPath and serves it. The config's resultFile
// receives "success" or "failed:<reason>", as the reference daemon writes it.
func (m *Manager) Attach(ctx context.Context, configPath string, fe Frontend) (st Status, err error) {
	return m.AttachTrace(ctx, configPath, fe, TraceOptions{})
}

// AttachTrace is Attach with run-time trace recording or replay.
func (m *Manager) AttachTrace(ctx context.Context, configPath string, fe Frontend, tr TraceOptions) (st Status, err error) {
	var cfg *config.ImageConfig
	start := time.Now()
	defer func() {
		result := "ok"
		if err != nil {
			result = "error"
			m.lg.Warn("attach failed", zap.String("config", configPath), zap.Error(err))
		}
		m.metrics.attaches.WithLabelValues(string(resolveFrontend(fe)), result).Inc()
		m.metrics.attachDuration.Observe(time.Since(start).Seconds())
		if cfg != nil {
			if werr := config.WriteResult(cfg.ResultFile, err); werr != nil {
				m.lg.Warn("write result file", zap.Error(werr))
			}
		}
	}()
	abs, err := filepath.Abs(configPath)
	if err != nil {
		return st, err
	}
	cfg, err = config.LoadImageConfig(abs)
	if err != nil {
		return st, err
	}
	for _, w := range cfg.Warnings {
		m.lg.Warn("config file " + abs + ": " + w)
	}
	cfg.InheritDownload(m.opts.Global)
	id, err := m.reserveID()
	if err != nil {
		return st, err
	}
	defer m.release(id)
	rec := Record{ID: id, Config: abs, Frontend: resolveFrontend(fe), PID: os.Getpid(), PIDStart: ownStart(), Created: time.Now().UTC(), TraceOptions: tr}
	d, err := m.bringUp(ctx, cfg, rec, false)
	if err != nil {
		return st, err
	}
	m.lg.Info("attached", zap.Int("id", id), zap.String("path", d.rec.Path), zap.String("config", abs), zap.String("frontend", string(d.rec.Frontend)))
	if len(d.dirs) > 0 {
		m.PruneLayerDirs()
	}
	st = d.status()
	st.Warnings = cfg.Warnings
	return st, nil
}

// serve serves d.target through a new device of d.rec.Frontend and fills in the
// record's path.
func (m *Manager) serve(d *device) error {
	switch d.rec.Frontend {
	case FrontendUblk:
		opts := ublkOptions(d.rec.ID, !m.opts.NoRecovery && m.opts.StateDir != "")
		dev, err := ublk.New(d.target, opts)
		if err != nil {
			return err
		}
		d.srv, d.rec.Path, d.rec.Recovery = dev, dev.Path(), opts.Recovery
	case FrontendFUSE:
		d.rec.MountDir = filepath.Join(m.fuseRoot, strconv.Itoa(d.rec.ID))
		return m.serveFUSE(d)
	default:
		return fmt.Errorf("unknown frontend %q", d.rec.Frontend)
	}
	return nil
}

// recover serves d.target through the recorded device of a dead server: the
// quiesced ublk device (user recovery) or the FUSE mount point again, with the
// loop devices over it moved to the new mount.
func (m *Manager) recover(d *device) error {
	switch d.rec.Frontend {
	case FrontendUblk:
		dev, err := ublk.Recover(uint32(d.rec.ID), d.target, ublkOptions(d.rec.ID, true))
		if err != nil {
			return err
		}
		d.srv = dev
	case FrontendFUSE:
		return m.recoverFUSE(d)
	default:
		return fmt.Errorf("unknown frontend %q", d.rec.Frontend)
	}
	return nil
}

func (m *Manager) serveFUSE(d *device) error {
	srv, err := serveFUSE(d.target, d.rec.MountDir)
	if err != nil {
		return err
	}
	d.srv, d.rec.Path = srv, srv.Path()
	return nil
}

func (d *device) status() Status {
	return Status{Record: d.rec, State: StateLive, Size: d.target.Size(), ReadOnly: d.target.readOnly(),
		BytesRead: d.target.read.Load(), BytesWritten: d.target.written.Load(),
		ReadErrors: d.target.readErrs.Load(), WriteErrors: d.target.writeErrs.Load(), Downloads: d.img.Downloads()}
}

// lookup finds a device by id ("3") or path ("/dev/ublkb3", the FUSE image file).
func (m *Manager) lookup(ref string) (*device, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id, err := strconv.Atoi(ref); err == nil {
		if d := m.devices[id]; d != nil {
			return d, nil
		}
	}
	for _, d := range m.devices {
		if d.rec.Path == ref || d.rec.MountDir == ref {
			return d, nil
		}
	}
	return nil, fmt.Errorf("no device %q", ref)
}

// Detach stops serving a device (flushing its writable layer) and forgets it. A
// device in use (mounted, loop-attached, held) is refused unless force; force
// flushes it first, and a FUSE device is then unmounted lazily (see
// fuseblk.Mounted.ForceClose): its users get I/O errors.
func (m *Manager) Detach(ref string, force bool) error {
	if m.forgetFailed(ref) {
		return nil
	}
	d, err := m.lookup(ref)
	if err != nil {
		return err
	}
	if force {
		if err := d.target.Flush(); err != nil {
			m.lg.Error("flush before a forced detach", zap.Int("id", d.rec.ID), zap.String("path", d.rec.Path), zap.Error(err))
		}
	}
	if d.rec.Frontend == FrontendUblk && !force {
		if err := blockDeviceBusy(d.rec.Path); err != nil {
			return fmt.Errorf("detach %s: %w (unmount it first, or force)", d.rec.Path, err)
		}
	}
	m.mu.Lock()
	if m.devices[d.rec.ID] != d {
		m.mu.Unlock()
		return fmt.Errorf("device %q is already being detached", ref)
	}
	delete(m.devices, d.rec.ID)
	m.mu.Unlock()
	if fc, ok := d.srv.(interface{ ForceClose() error }); ok && force {
		if err := fc.ForceClose(); err != nil {
			m.lg.Warn("forced detach", zap.Int("id", d.rec.ID), zap.String("path", d.rec.Path), zap.Error(err))
		}
	} else {
		err = d.srv.Close()
	}
	if err != nil {
		// Still in use (e.g. mounted): keep the device.
		m.mu.Lock()
		m.devices[d.rec.ID] = d
		m.mu.Unlock()
		return fmt.Errorf("detach %s: %w", d.rec.Path, err)
	}
	cerr := d.img.Close()
	if d.rec.MountDir != "" {
		os.Remove(d.rec.MountDir)
	}
	m.forgetGenerated(d.rec.Config)
	m.metrics.detaches.Inc()
	m.lg.Info("detached", zap.Int("id", d.rec.ID), zap.String("path", d.rec.Path))
	err = errors.Join(cerr, m.state.remove(d.rec.ID))
	m.releaseLayerDirs(d.dirs)
	if len(d.dirs) > 0 {
		m.PruneLayerDirs()
	}
	return err
}

// List reports every device, by id.
func (m *Manager) List() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.devices))
	for _, d := range m.devices {
		out = append(out, d.status())
	}
	for _, r := range m.failed {
		out = append(out, Status{Record: r, State: StateFailed})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// DetachAll detaches every device (daemon shutdown, end of a foreground attach).
func (m *Manager) DetachAll() error {
	// In parallel: a daemon stop must fit in the service manager's stop timeout
	// however many devices there are and however slow one of them is to close.
	list := m.List()
	errs := make([]error, len(list))
	var g errgroup.Group // every device is tried: errs names each failure
	g.SetLimit(detachAllParallel)
	for i, s := range list {
		g.Go(func() error {
			errs[i] = m.Detach(strconv.Itoa(s.ID), false)
			return nil
		})
	}
	g.Wait()
	return errors.Join(errs...)
}

// detachAllParallel bounds the detaches DetachAll runs at once.
const detachAllParallel = 32

// Restore runs at daemon start: devices recorded in the state directory whose server
// died are served again (ublk devices through user recovery: the kernel kept them
// quiesced, mounted file systems never notice; FUSE devices are mounted again), and
// ublk devices nobody owns are deleted. Devices are recovered one at a time; one
// that cannot be served (an error, even a panic) is logged, deleted from the
// kernel (its I/O would hang) and kept in the state directory with its error,
// shown as "failed" by List until detached, and the others are recovered still:
// a failure never makes the daemon exit, so it never crash-loops.
func (m *Manager) Restore(ctx context.Context) error {
	recs, errs := m.state.load()
	for _, e := range errs {
		m.lg.Warn("state", zap.Error(e))
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	var ok, failed int
	for _, r := range recs {
		if r.PID != os.Getpid() && servedBy(r.PID, r.PIDStart) {
			m.lg.Warn("device served by another live process, leaving it", zap.Int("id", r.ID), zap.Int("pid", r.PID))
			continue
		}
		if err := m.restoreSafely(ctx, r); err != nil {
			failed++
			m.lg.Error("could not recover device", zap.Int("id", r.ID), zap.String("path", r.Path), zap.Error(err))
			if r.Frontend == FrontendUblk {
				ublk.Delete(uint32(r.ID))
			}
			r.RestoreError = err.Error()
			if serr := m.state.save(r); serr != nil {
				m.lg.Warn("state", zap.Error(serr))
			}
			m.mu.Lock()
			m.failed[r.ID] = r
			m.mu.Unlock()
			continue
		}
		ok++
	}
	if len(recs) > 0 {
		m.lg.Info("restore done", zap.Int("recovered", ok), zap.Int("failed", failed))
	}
	if ublk.Available() {
		deleted, err := ublk.CleanupOrphans(func(id uint32) bool {
			m.mu.Lock()
			defer m.mu.Unlock()
			return m.devices[int(id)] != nil
		})
		for _, id := range deleted {
			m.lg.Info("deleted orphan ublk device", zap.Uint32("id", id))
		}
		if err != nil {
			m.lg.Warn("orphan cleanup", zap.Error(err))
		}
	}
	// After the recoveries, so their layer directories count as used.
	m.PruneLayerDirs()
	go m.pruneLayerDirsEvery(ctx, layerDirPruneInterval)
	return nil
}

// restoreSafely is restore with a panic (a bug, a hostile layer) turned into
// that device's error: the other devices are still recovered.
func (m *Manager) restoreSafely(ctx context.Context, r Record) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic while recovering: %v", p)
			m.lg.Error("panic while recovering device", zap.Int("id", r.ID), zap.Any("panic", p), zap.Stack("stack"))
		}
	}()
	return m.restore(ctx, r)
}

// forgetFailed drops the record of a device that Restore could not serve, if
// ref names one (its id or path).
func (m *Manager) forgetFailed(ref string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, r := range m.failed {
		if strconv.Itoa(id) == ref || r.Path == ref || (r.MountDir != "" && r.MountDir == ref) {
			delete(m.failed, id)
			if err := m.state.remove(id); err != nil {
				m.lg.Warn("state", zap.Error(err))
			}
			m.lg.Info("forgot failed device", zap.Int("id", id), zap.String("path", r.Path))
			return true
		}
	}
	return false
}

func (m *Manager) restore(ctx context.Context, r Record) (err error) {
	cfg, err := config.LoadImageConfig(r.Config)
	if err != nil {
		return err
	}
	cfg.InheritDownload(m.opts.Global)
	switch r.Frontend {
	case FrontendUblk:
		info, err := ublk.GetInfo(uint32(r.ID))
		if err != nil {
			return fmt.Errorf("ublk device %d is gone: %w", r.ID, err)
		}
		// The driver quiesces a dead server's device a few seconds after the
		// process died (its monitor work): a daemon restarted at once sees it LIVE.
		for deadline := time.Now().Add(quiesceWait); r.Recovery && info.State == ublk.StateLive &&
			serverGone(info.ServerPID, r) && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			if info, err = ublk.GetInfo(uint32(r.ID)); err != nil {
				return fmt.Errorf("ublk device %d is gone: %w", r.ID, err)
			}
		}
		if !r.Recovery || info.State != ublk.StateQuiesced {
			return fmt.Errorf("ublk device %d is %s and was created without recovery=%v: cannot recover", r.ID, info.State, r.Recovery)
		}
	case FrontendFUSE:
	default:
		return fmt.Errorf("unknown frontend %q", r.Frontend)
	}
	r.PID, r.PIDStart, r.RestoreError = os.Getpid(), ownStart(), ""
	d, err := m.bringUp(ctx, cfg, r, true)
	if err != nil {
		return err
	}
	m.metrics.recovered.Inc()
	m.lg.Info("recovered device", zap.Int("id", r.ID), zap.String("path", d.rec.Path))
	return nil
}

// recoverTrace decides what becomes of a device's run-time trace when the daemon
// that served it died; it returns the options to run and sets the record's
// TraceRecovery and TraceNote. A prefetch replays again; a recording follows
// trace.RecoverRecording (its reads died with the old daemon).
func (m *Manager) recoverTrace(r *Record) TraceOptions {
	t := r.TraceOptions
	r.TraceRecovery, r.TraceNote = "", ""
	switch {
	case t.Prefetch != "":
		r.TraceRecovery = TraceRecoveryReplayed
		return t
	case t.RecordTrace == "":
		return t
	}
	lg := m.lg.With(zap.Int("id", r.ID), zap.String("trace", t.RecordTrace))
	switch trace.RecoverRecording(t.RecordTrace) {
	case trace.RecoveryResume:
		r.TraceRecovery = TraceRecoveryResumed
		r.TraceNote = "recording resumed after a daemon restart at " + time.Now().UTC().Format(time.RFC3339) +
			": the reads before it were lost with the old daemon and are not in the trace"
		lg.Warn("trace " + r.TraceNote)
		return t
	case trace.RecoveryDone:
		r.TraceRecovery = TraceRecoveryDone
		r.TraceNote = "recorded before a daemon restart: not recording again"
		lg.Info("trace " + r.TraceNote)
	default:
		r.TraceRecovery = TraceRecoveryLost
		r.TraceNote = "recording lost in a daemon restart: its .lock was deleted while no daemon ran, the reads were lost with the old daemon, no trace written (attach again with --record-trace)"
		lg.Error("trace " + r.TraceNote)
	}
	return TraceOptions{}
}

// quiesceWait bounds how long Restore waits for the driver to quiesce a
// device whose server died (it checks every few seconds; slower under emulation).
const quiesceWait = 30 * time.Second

// serverGone reports whether the process serving a ublk device (the driver's
// server pid) is dead, or is the record's PID now held by another process.
func serverGone(serverPID int, r Record) bool {
	if serverPID == r.PID {
		return !servedBy(r.PID, r.PIDStart)
	}
	return !proc.Alive(serverPID)
}

// openImage is image.Open; a test makes it fail for one device.
var openImage = image.Open

// ownStart is this process's start time, recorded with its PID. Read on first
// use, not at init: every obd command links this package.
var ownStart = sync.OnceValue(func() uint64 {
	start, _ := proc.Start(os.Getpid())
	return start
})

// servedBy reports whether the process that recorded a device (pid, started at
// start) still runs. A live PID whose start time differs, or (records without a
// start time) that does not run this program, was recycled by another process.
func servedBy(pid int, start uint64) bool {
	now, alive := proc.Start(pid)
	switch {
	case !alive:
		return false
	case start != 0:
		return now == start
	}
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	own, ownErr := os.Readlink("/proc/self/exe")
	if err != nil || ownErr != nil {
		return true // cannot tell: leave the device to it, as before
	}
	return strings.TrimSuffix(exe, " (deleted)") == strings.TrimSuffix(own, " (deleted)")
}
