package p2p

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ClientTLS trusts the PEM certificates in caFile in addition to the system roots.
func ClientTLS(caFile string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("p2p CA file: %w", err)
	}
	return ClientTLSPEM(caFile, pem)
}

// ClientTLSPEM is ClientTLS for the PEM bytes already read from caFile.
func ClientTLSPEM(caFile string, pem []byte) (*tls.Config, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("p2p CA file %s: no PEM certificate", caFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// LoadToken returns token, or the trimmed content of tokenFile when token is empty.
func LoadToken(token, tokenFile string) (string, error) {
	if token == "" && tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("p2p token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return "", errors.New("p2p: peer mode needs a token (p2pConfig.token or tokenFile)")
	}
	return token, nil
}
