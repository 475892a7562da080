package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Serve runs the API on a unix socket until ctx ends. The socket is root-only: mode
// 0600 in a 0700 directory, and each connection's peer uid must be 0 or ours.
func Serve(ctx context.Context, m *Manager, socket string) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return err
	}
	if c, err := net.Dial("unix", socket); err == nil {
		c.Close()
		return fmt.Errorf("%s: another daemon is listening", socket)
	}
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/attach", func(w http.ResponseWriter, r *http.Request) {
		var req AttachRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Config == "" {
			reply(w, http.StatusBadRequest, ErrorBody{Error: "body: want {\"config\": \"/path/config.v1.json\"}"})
			return
		}
		fe, err := ParseFrontend(string(req.Frontend))
		if err != nil {
			reply(w, http.StatusBadRequest, ErrorBody{Error: err.Error()})
			return
		}
		st, err := m.AttachTrace(r.Context(), req.Config, fe, req.TraceOptions)
		if err != nil {
			reply(w, http.StatusUnprocessableEntity, ErrorBody{Error: err.Error()})
			return
		}
		reply(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /v1/attach-image", func(w http.ResponseWriter, r *http.Request) {
		var req ImageRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Ref == "" {
			reply(w, http.StatusBadRequest, ErrorBody{Error: "body: want {\"ref\": \"registry/repo:tag\"}"})
			return
		}
		fe, err := ParseFrontend(string(req.Frontend))
		if err != nil {
			reply(w, http.StatusBadRequest, ErrorBody{Error: err.Error()})
			return
		}
		req.Frontend = fe
		st, err := m.AttachImage(r.Context(), req)
		if err != nil {
			reply(w, http.StatusUnprocessableEntity, ErrorBody{Error: err.Error()})
			return
		}
		reply(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /v1/detach", func(w http.ResponseWriter, r *http.Request) {
		var req DetachRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Device == "" {
			reply(w, http.StatusBadRequest, ErrorBody{Error: "body: want {\"device\": \"ID or path\"}"})
			return
		}
		if err := m.Detach(req.Device, req.Force); err != nil {
			reply(w, http.StatusConflict, ErrorBody{Error: err.Error()})
			return
		}
		reply(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("GET /v1/list", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, m.List())
	})
	// The metrics, also without --metrics-addr (obd stats reads them here).
	mux.Handle("GET /v1/metrics", promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	m.lg.Info("daemon listening", zap.String("socket", socket))
	err = srv.Serve(rootOnly{ln.(*net.UnixListener), m.lg})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// rootOnly accepts connections from uid 0 or the daemon's own uid only.
type rootOnly struct {
	*net.UnixListener
	lg *zap.Logger
}

func (l rootOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		raw, err := c.SyscallConn()
		if err != nil {
			c.Close()
			continue
		}
		var cred *syscall.Ucred
		var cerr error
		raw.Control(func(fd uintptr) {
			cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
		})
		if cerr != nil || (cred.Uid != 0 && int(cred.Uid) != os.Getuid()) {
			l.lg.Warn("refused API connection", zap.Error(cerr))
			c.Close()
			continue
		}
		return c, nil
	}
}
