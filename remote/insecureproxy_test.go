package remote

import (
	"testing"

	"github.com/obd-project/obd/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// URL-prefix mode sends the registry's Authorization header to the proxy: a plain
// http:// proxy off loopback is not used without p2pConfig.allowInsecureProxy,
// and is loudly warned about with it.
func TestClearTextProxyNeedsOptIn(t *testing.T) {
	for _, tc := range []struct {
		address  string
		optIn    bool
		useProxy bool
		level    zapcore.Level // of the start-up message; InfoLevel: none expected
	}{
		{"http://localhost:19145/dadip2p", false, true, zapcore.InfoLevel},
		{"127.0.0.1:19145/dadip2p", false, true, zapcore.InfoLevel},
		{"https://10.1.2.3:19145/dadip2p", false, true, zapcore.InfoLevel},
		{"10.1.2.3:19145/dadip2p", false, false, zapcore.ErrorLevel},
		{"http://p2p.example:19145/dadip2p", false, false, zapcore.ErrorLevel},
		{"http://10.1.2.3:19145/dadip2p", true, true, zapcore.WarnLevel},
	} {
		core, logs := observer.New(zapcore.WarnLevel)
		lg := zap.New(core)
		op, err := NewOpener(Options{CacheDir: t.TempDir(), Logger: lg,
			P2P: config.P2PConfig{Enable: true, Mode: config.P2PModeProxy, Address: tc.address, AllowInsecureProxy: tc.optIn}})
		if err != nil {
			t.Fatalf("%s: %v", tc.address, err)
		}
		if (op.proxy != nil) != tc.useProxy {
			t.Errorf("%s (opt-in %v): proxy used %v, want %v", tc.address, tc.optIn, op.proxy != nil, tc.useProxy)
		}
		var found bool
		for _, e := range logs.All() {
			found = found || (e.Level == tc.level && (e.Message[:3] == "p2p" || e.Message[:8] == "INSECURE"))
		}
		if tc.level != zapcore.InfoLevel && !found {
			t.Errorf("%s (opt-in %v): no %v start-up message: %v", tc.address, tc.optIn, tc.level, logs.All())
		}
		op.Close()
	}
}
