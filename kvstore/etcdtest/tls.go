package etcdtest

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshplane/meshplane/pki"
)

// TLSFiles are PEM files for a TLS-protected etcd: a CA, a server
// certificate for 127.0.0.1 and localhost signed by it, and a client
// certificate.
type TLSFiles struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

// tlsValidity is how long the certificates stay valid: longer than any
// test runs. The CA lasts an hour more, as a CA must outlive what it
// issues.
const tlsValidity = 24 * time.Hour

// NewTLSFiles writes a fresh CA and certificates into dir; package pki
// makes them.
func NewTLSFiles(tb testing.TB, dir string) TLSFiles {
	tb.Helper()
	f := TLSFiles{
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
	}
	ca, err := pki.NewCA(pki.Options{CommonName: "etcdtest CA", Validity: tlsValidity + time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	if err := pki.WriteFile(f.CA, ca.CertPEM(), 0o644); err != nil {
		tb.Fatal(err)
	}
	for _, c := range []struct {
		req               pki.Request
		certFile, keyFile string
	}{
		{pki.Request{CommonName: "etcd-server", DNSNames: []string{"localhost"}, IPs: []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})},
			Usage: pki.ServerAuth, Validity: tlsValidity}, f.ServerCert, f.ServerKey},
		{pki.Request{CommonName: "meshplane-agent", Usage: pki.ClientAuth, Validity: tlsValidity}, f.ClientCert, f.ClientKey},
	} {
		p, err := ca.Issue(c.req)
		if err != nil {
			tb.Fatal(err)
		}
		if err := p.WriteFiles(c.certFile, c.keyFile); err != nil {
			tb.Fatal(err)
		}
	}
	return f
}
