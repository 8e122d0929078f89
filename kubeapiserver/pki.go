package kubeapiserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/meshplane/meshplane/pki"
)

// pkiFiles is what one apiserver is given: a CA and a serving
// certificate it signed (for 127.0.0.1, localhost, the kubernetes
// Service's names and any serving IPs the caller adds), and a
// service-account key pair. The serving certificate is valid for a year
// (a lab's apiserver may stay up for long), the CA for pki's default.
type pkiFiles struct {
	caPEM                      []byte
	caFile, certFile, keyFile  string
	saPublicFile, saSignerFile string
}

// servingValidity is how long the serving certificate stays valid.
const servingValidity = 365 * 24 * time.Hour

func writePKI(dir string, servingIPs []netip.Addr) (pkiFiles, error) {
	p := pkiFiles{
		caFile: filepath.Join(dir, "ca.crt"), certFile: filepath.Join(dir, "apiserver.crt"),
		keyFile: filepath.Join(dir, "apiserver.key"), saPublicFile: filepath.Join(dir, "sa.pub"),
		saSignerFile: filepath.Join(dir, "sa.key"),
	}
	ca, err := pki.NewCA(pki.Options{CommonName: "kubeapiserver CA"})
	if err != nil {
		return p, err
	}
	p.caPEM = ca.CertPEM()
	if err := pki.WriteFile(p.caFile, p.caPEM, 0o644); err != nil {
		return p, err
	}
	serving, err := ca.Issue(pki.Request{
		CommonName: "kube-apiserver",
		DNSNames:   []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPs:        append([]netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}, servingIPs...),
		Usage:      pki.ServerAuth,
		Validity:   servingValidity,
	})
	if err != nil {
		return p, err
	}
	if err := serving.WriteFiles(p.certFile, p.keyFile); err != nil {
		return p, err
	}
	return p, writeServiceAccountKey(p.saPublicFile, p.saSignerFile)
}

// writeServiceAccountKey writes the key pair the apiserver signs and
// checks service-account tokens with: a bare key, no certificate.
func writeServiceAccountKey(publicFile, signerFile string) error {
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(sa)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	if err := pki.WriteFile(publicFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return err
	}
	return pki.WriteFile(signerFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// newToken returns a random bearer token.
func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return hex.EncodeToString(b), nil
}
