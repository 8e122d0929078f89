package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/pki"
)

func newCA(t *testing.T, opts pki.Options) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(opts)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t *testing.T, ca *pki.CA, req pki.Request) (pki.Pair, *x509.Certificate) {
	t.Helper()
	p, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.ParseCertificate(p.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p, cert
}

// TestVerifyUsage checks that each issued certificate chains to its CA
// for the usages it was issued for, and fails x509.Verify for the other.
func TestVerifyUsage(t *testing.T) {
	ca := newCA(t, pki.Options{CommonName: "test CA"})
	other := newCA(t, pki.Options{CommonName: "other CA"})
	tests := []struct {
		usage              pki.Usage
		asServer, asClient bool
	}{
		{pki.ServerAuth, true, false},
		{pki.ClientAuth, false, true},
		{pki.ServerAuth | pki.ClientAuth, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.usage.String(), func(t *testing.T) {
			_, cert := issue(t, ca, pki.Request{CommonName: "leaf", DNSNames: []string{"leaf.example"}, Usage: tt.usage})
			for _, c := range []struct {
				eku  x509.ExtKeyUsage
				want bool
			}{{x509.ExtKeyUsageServerAuth, tt.asServer}, {x509.ExtKeyUsageClientAuth, tt.asClient}} {
				_, err := cert.Verify(x509.VerifyOptions{Roots: ca.CertPool(), KeyUsages: []x509.ExtKeyUsage{c.eku}})
				if c.want && err != nil {
					t.Errorf("verify for usage %v: %v", c.eku, err)
				}
				if !c.want {
					var invalid x509.CertificateInvalidError
					if !errors.As(err, &invalid) || invalid.Reason != x509.IncompatibleUsage {
						t.Errorf("verify for usage %v = %v, want IncompatibleUsage", c.eku, err)
					}
				}
			}
			// Another CA's pool does not accept it.
			_, err := cert.Verify(x509.VerifyOptions{Roots: other.CertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			var unknown x509.UnknownAuthorityError
			if !errors.As(err, &unknown) {
				t.Errorf("verify against another CA = %v, want UnknownAuthorityError", err)
			}
		})
	}
}

// TestMutualTLS runs TLS handshakes with issued certificates: a server
// and a client certificate authenticate each other; a server-only
// certificate is refused as a client.
func TestMutualTLS(t *testing.T) {
	ca := newCA(t, pki.Options{})
	server, _ := issue(t, ca, pki.Request{CommonName: "etcd", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Usage: pki.ServerAuth})
	client, _ := issue(t, ca, pki.Request{CommonName: "cluster-b", Usage: pki.ClientAuth})
	tests := []struct {
		name   string
		client pki.Pair
		ok     bool
	}{
		{"client certificate", client, true},
		{"server certificate as client", server, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peer, err := handshake(t, ca, server, tt.client)
			if tt.ok && (err != nil || peer != "cluster-b") {
				t.Fatalf("handshake: peer %q, %v; want cluster-b", peer, err)
			}
			if !tt.ok && err == nil {
				t.Fatalf("handshake succeeded with peer %q", peer)
			}
		})
	}
}

// handshake runs a mutual TLS handshake over a pipe and returns the
// client's CommonName as the server saw it, or the server's error.
func handshake(t *testing.T, ca *pki.CA, server, client pki.Pair) (string, error) {
	t.Helper()
	sc, err := tls.X509KeyPair(server.CertPEM, server.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{sc}, ClientCAs: ca.CertPool(), ClientAuth: tls.RequireAndVerifyClientCert})
	cli := tls.Client(b, &tls.Config{Certificates: []tls.Certificate{cc}, RootCAs: ca.CertPool(), ServerName: "127.0.0.1"})
	done := make(chan error, 1)
	go func() {
		err := cli.Handshake()
		// Unblock the server if the client gave up first.
		_ = b.Close()
		done <- err
	}()
	serr := srv.Handshake()
	_ = a.Close()
	<-done
	if serr != nil {
		return "", serr
	}
	return srv.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
}

// TestSubjectAndSANs checks the subject and every name asked for.
func TestSubjectAndSANs(t *testing.T) {
	ca := newCA(t, pki.Options{CommonName: "kubelet CA"})
	_, cert := issue(t, ca, pki.Request{
		CommonName: "node-1", Organization: []string{"system:nodes"},
		DNSNames: []string{"node-1", "localhost"},
		IPs: []netip.Addr{
			netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("::ffff:127.0.0.1"), netip.MustParseAddr("fd00::7"),
		},
		Usage: pki.ServerAuth,
	})
	if cert.Subject.CommonName != "node-1" || !slices.Equal(cert.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("subject = %v, want CN=node-1, O=system:nodes", cert.Subject)
	}
	if cert.Issuer.CommonName != "kubelet CA" {
		t.Errorf("issuer = %v, want kubelet CA", cert.Issuer)
	}
	if !slices.Equal(cert.DNSNames, []string{"node-1", "localhost"}) {
		t.Errorf("DNS names = %q", cert.DNSNames)
	}
	for _, host := range []string{"node-1", "localhost", "10.0.0.7", "127.0.0.1", "fd00::7"} {
		if err := cert.VerifyHostname(host); err != nil {
			t.Errorf("VerifyHostname(%s): %v", host, err)
		}
	}
	if err := cert.VerifyHostname("node-2"); err == nil {
		t.Error("VerifyHostname(node-2) succeeded")
	}
	if cert.IsCA {
		t.Error("leaf is a CA")
	}
	if _, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("public key %T, want ECDSA", cert.PublicKey)
	}
}

// TestValidity checks NotBefore and NotAfter for given and default
// validities, and that a certificate may not outlive its CA.
func TestValidity(t *testing.T) {
	ca := newCA(t, pki.Options{Validity: 30 * 24 * time.Hour})
	caCert := ca.Certificate()
	within := func(got, lo, hi time.Time) bool {
		// x509 keeps seconds.
		return !got.Before(lo.Truncate(time.Second)) && !got.After(hi)
	}
	if d := caCert.NotAfter.Sub(caCert.NotBefore); d < 30*24*time.Hour || d > 30*24*time.Hour+pki.ClockSkew+time.Minute {
		t.Errorf("CA valid for %v, want 30 days and the clock skew", d)
	}
	if !caCert.IsCA || !caCert.MaxPathLenZero || caCert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA: IsCA %v, MaxPathLenZero %v, key usage %v", caCert.IsCA, caCert.MaxPathLenZero, caCert.KeyUsage)
	}

	for _, tt := range []struct {
		validity, want time.Duration
	}{{2 * time.Hour, 2 * time.Hour}, {7 * 24 * time.Hour, 7 * 24 * time.Hour}} {
		before := time.Now()
		_, cert := issue(t, ca, pki.Request{CommonName: "c", Usage: pki.ClientAuth, Validity: tt.validity})
		after := time.Now()
		if !within(cert.NotAfter, before.Add(tt.want), after.Add(tt.want)) {
			t.Errorf("validity %v: NotAfter %v, want between %v and %v", tt.validity, cert.NotAfter, before.Add(tt.want), after.Add(tt.want))
		}
		// NotBefore lies ClockSkew back (and after the CA's, made earlier).
		if !within(cert.NotBefore, before.Add(-pki.ClockSkew), after.Add(-pki.ClockSkew)) || cert.NotBefore.Before(caCert.NotBefore) {
			t.Errorf("validity %v: NotBefore %v, want %v back from %v", tt.validity, cert.NotBefore, pki.ClockSkew, before)
		}
		left, err := pki.Remaining(cert, time.Now())
		if err != nil || left <= tt.want-time.Minute || left > tt.want {
			t.Errorf("validity %v: Remaining = %v, %v", tt.validity, left, err)
		}
	}

	// A zero validity is DefaultValidity: a year, longer than this CA.
	_, err := ca.Issue(pki.Request{CommonName: "c", Usage: pki.ClientAuth})
	if !errors.Is(err, pki.ErrOutlivesCA) {
		t.Errorf("default validity from a 30-day CA: %v, want ErrOutlivesCA", err)
	}
	_, err = ca.Issue(pki.Request{CommonName: "c", Usage: pki.ClientAuth, Validity: 31 * 24 * time.Hour})
	if !errors.Is(err, pki.ErrOutlivesCA) || !strings.Contains(err.Error(), "renew the CA") {
		t.Errorf("31 days from a 30-day CA: %v, want ErrOutlivesCA saying to renew the CA", err)
	}
	long := newCA(t, pki.Options{})
	before := time.Now()
	_, cert := issue(t, long, pki.Request{CommonName: "c", Usage: pki.ClientAuth})
	if !within(cert.NotAfter, before.Add(pki.DefaultValidity), time.Now().Add(pki.DefaultValidity)) {
		t.Errorf("default validity: NotAfter %v, want a year from now", cert.NotAfter)
	}
	if got := long.Certificate().NotAfter.Sub(before); got < pki.DefaultCAValidity-time.Minute || got > pki.DefaultCAValidity+time.Minute {
		t.Errorf("default CA validity: %v, want %v", got, pki.DefaultCAValidity)
	}
}

// TestInvalid checks that options and requests that cannot make a
// useful certificate are refused, saying why.
func TestInvalid(t *testing.T) {
	if _, err := pki.NewCA(pki.Options{Validity: -time.Hour}); !errors.Is(err, pki.ErrInvalidRequest) {
		t.Errorf("NewCA with negative validity: %v, want ErrInvalidRequest", err)
	}
	ca := newCA(t, pki.Options{})
	tests := []struct {
		name string
		req  pki.Request
		msg  string
	}{
		{"no common name", pki.Request{Usage: pki.ClientAuth}, "no CommonName"},
		{"no usage", pki.Request{CommonName: "c", DNSNames: []string{"c"}}, "give ServerAuth, ClientAuth or both"},
		{"unknown usage", pki.Request{CommonName: "c", DNSNames: []string{"c"}, Usage: 8}, "give ServerAuth, ClientAuth or both"},
		{"server without names", pki.Request{CommonName: "c", Usage: pki.ServerAuth}, "without DNSNames or IPs"},
		{"zero IP", pki.Request{CommonName: "c", IPs: []netip.Addr{{}}, Usage: pki.ServerAuth}, "zero netip.Addr"},
		{"negative validity", pki.Request{CommonName: "c", Usage: pki.ClientAuth, Validity: -time.Second}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.Issue(tt.req)
			if !errors.Is(err, pki.ErrInvalidRequest) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Issue = %v, want ErrInvalidRequest saying %q", err, tt.msg)
			}
		})
	}
}

// TestSerials checks that serial numbers are positive, at most 128 bits
// and distinct.
func TestSerials(t *testing.T) {
	ca := newCA(t, pki.Options{})
	seen := map[string]bool{ca.Certificate().SerialNumber.String(): true}
	for range 20 {
		_, cert := issue(t, ca, pki.Request{CommonName: "c", Usage: pki.ClientAuth})
		s := cert.SerialNumber
		if s.Sign() <= 0 || s.BitLen() > 128 || seen[s.String()] {
			t.Fatalf("serial %v: want positive, at most 128 bits, new", s)
		}
		seen[s.String()] = true
	}
}

// TestLoadCA checks that a CA written to files loads again and issues
// certificates its first self's pool verifies, and that keys in PKCS #8
// and an RSA CA made elsewhere load too.
func TestLoadCA(t *testing.T) {
	ca := newCA(t, pki.Options{CommonName: "mesh CA"})
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := ca.Pair().WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := pki.LoadCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if string(loaded.CertPEM()) != string(ca.CertPEM()) || !loaded.Certificate().Equal(ca.Certificate()) {
		t.Error("loaded CA's certificate differs")
	}
	_, cert := issue(t, loaded, pki.Request{CommonName: "cluster-b", Usage: pki.ClientAuth})
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.CertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate from the loaded CA: %v", err)
	}

	// The same key as PKCS #8.
	block, _ := pem.Decode(keyPEM)
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		t.Errorf("PKCS #8 key: %v", err)
	}

	// An RSA CA (PKCS #1 key) made with openssl's defaults elsewhere.
	rsaCert, rsaKey := selfSigned(t, true, x509.KeyUsageCertSign)
	rsaCA, err := pki.LoadCA(rsaCert, rsaKey)
	if err != nil {
		t.Fatalf("RSA CA: %v", err)
	}
	_, cert = issue(t, rsaCA, pki.Request{CommonName: "c", DNSNames: []string{"c"}, Usage: pki.ServerAuth, Validity: time.Hour})
	if _, err := cert.Verify(x509.VerifyOptions{Roots: rsaCA.CertPool(), DNSName: "c"}); err != nil {
		t.Errorf("certificate from the RSA CA: %v", err)
	}
}

// TestLoadCARefuses checks LoadCA's errors: a key of another
// certificate, a certificate that is not a CA, input without PEM.
func TestLoadCARefuses(t *testing.T) {
	ca := newCA(t, pki.Options{CommonName: "mesh CA"})
	other := newCA(t, pki.Options{CommonName: "other CA"})
	leaf, _ := issue(t, ca, pki.Request{CommonName: "cluster-b", Usage: pki.ClientAuth})
	noSign, noSignKey := selfSigned(t, true, x509.KeyUsageDigitalSignature)
	tests := []struct {
		name         string
		certPEM, key []byte
		want         error
		msg          string
	}{
		{"key of another CA", ca.CertPEM(), other.Pair().KeyPEM, pki.ErrKeyMismatch, "pass the key that was made with this certificate"},
		{"leaf certificate", leaf.CertPEM, leaf.KeyPEM, pki.ErrNotCA, "not one it issued"},
		{"CA without cert-sign usage", noSign, noSignKey, pki.ErrNotCA, "lacks certificate signing"},
		{"key as certificate", ca.Pair().KeyPEM, ca.Pair().KeyPEM, pki.ErrNoPEM, "CERTIFICATE"},
		{"certificate as key", ca.CertPEM(), ca.CertPEM(), pki.ErrNoPEM, "PRIVATE KEY"},
		{"empty", nil, nil, pki.ErrNoPEM, "CERTIFICATE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pki.LoadCA(tt.certPEM, tt.key)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("LoadCA = %v, want %v saying %q", err, tt.want, tt.msg)
			}
		})
	}
}

// selfSigned returns a self-signed RSA certificate and its PKCS #1 key,
// as other tools make them.
func selfSigned(t *testing.T, isCA bool, usage x509.KeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "elsewhere CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: isCA, BasicConstraintsValid: true, KeyUsage: usage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
}

// TestWriteFiles checks the files' contents and modes (the key 0600 even
// where a wider file was), and that no temporary file stays behind.
func TestWriteFiles(t *testing.T) {
	ca := newCA(t, pki.Options{})
	p, _ := issue(t, ca, pki.Request{CommonName: "c", Usage: pki.ClientAuth})
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	// An old key file readable by all is replaced, not rewritten in place.
	if err := os.WriteFile(keyFile, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{certFile, p.CertPEM, 0o644}, {keyFile, p.KeyPEM, 0o600}} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode().Perm(), f.mode)
		}
		b, err := os.ReadFile(f.path)
		if err != nil || string(b) != string(f.data) {
			t.Errorf("%s: %v, contents differ", f.path, err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("dir holds %d entries, want the two files", len(entries))
	}
	if err := p.WriteFiles(filepath.Join(dir, "missing", "c.crt"), keyFile); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("WriteFiles into a missing directory = %v, want an error naming it", err)
	}
}

// TestRemaining checks Remaining and Expiry around a certificate's
// validity.
func TestRemaining(t *testing.T) {
	ca := newCA(t, pki.Options{})
	p, cert := issue(t, ca, pki.Request{CommonName: "cluster-b", Usage: pki.ClientAuth, Validity: 48 * time.Hour})
	exp, err := pki.Expiry(p.CertPEM)
	if err != nil || !exp.Equal(cert.NotAfter) {
		t.Fatalf("Expiry = %v, %v, want %v", exp, err, cert.NotAfter)
	}
	if _, err := pki.Expiry([]byte("not PEM")); !errors.Is(err, pki.ErrNoPEM) {
		t.Errorf("Expiry of garbage: %v, want ErrNoPEM", err)
	}
	tests := []struct {
		name string
		now  time.Time
		left time.Duration
		want error
	}{
		{"valid", cert.NotAfter.Add(-time.Hour), time.Hour, nil},
		{"expired", cert.NotAfter.Add(3 * time.Hour), -3 * time.Hour, pki.ErrExpired},
		{"not yet valid", cert.NotBefore.Add(-time.Hour), cert.NotAfter.Sub(cert.NotBefore) + time.Hour, pki.ErrNotYetValid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			left, err := pki.Remaining(cert, tt.now)
			if left != tt.left || !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Remaining = %v, %v; want %v, %v", left, err, tt.left, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), "cluster-b") {
				t.Errorf("error %q does not name the certificate", err)
			}
		})
	}
}

// TestECDSAKeys checks that NewCA and Issue make P-256 keys that match
// their certificates.
func TestECDSAKeys(t *testing.T) {
	ca := newCA(t, pki.Options{})
	p, _ := issue(t, ca, pki.Request{CommonName: "c", Usage: pki.ClientAuth})
	for _, pair := range []pki.Pair{ca.Pair(), p} {
		c, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		key, ok := c.PrivateKey.(*ecdsa.PrivateKey)
		if !ok || key.Curve != elliptic.P256() {
			t.Errorf("key %T, want ECDSA P-256", c.PrivateKey)
		}
	}
}
