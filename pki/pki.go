package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"time"
)

const (
	// DefaultCAValidity is how long a CA made with a zero
	// Options.Validity stays valid.
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// DefaultValidity is how long a certificate issued with a zero
	// Request.Validity stays valid.
	DefaultValidity = 365 * 24 * time.Hour
	// ClockSkew is how far in the past a certificate's NotBefore lies, so
	// that a peer whose clock is behind ours accepts it at once.
	ClockSkew = 5 * time.Minute
)

var (
	// ErrNotCA is returned by LoadCA for a certificate that may not sign
	// others (no basic constraints with CA set, or no cert-sign usage).
	ErrNotCA = errors.New("certificate is not a CA")
	// ErrKeyMismatch is returned by LoadCA when the key is not the one
	// of the certificate.
	ErrKeyMismatch = errors.New("key does not match the certificate")
	// ErrOutlivesCA is returned by Issue when the certificate asked for
	// would stay valid after the CA expires.
	ErrOutlivesCA = errors.New("certificate would outlive its CA")
	// ErrInvalidRequest is returned by NewCA and Issue for options or a
	// request that cannot make a useful certificate.
	ErrInvalidRequest = errors.New("invalid certificate request")
)

// Options describe a new CA.
type Options struct {
	// CommonName is the CA's subject; empty means "meshplane CA". Name
	// what the CA is for ("kubeapiserver CA", "mesh CA"): a person reads
	// it in a status line or openssl's output.
	CommonName string
	// Validity is how long the CA stays valid; zero means
	// DefaultCAValidity. It bounds every certificate the CA issues.
	Validity time.Duration
}

// Usage says what an issued certificate may authenticate: a TLS server,
// a TLS client, or both (ServerAuth|ClientAuth).
type Usage uint8

const (
	// ServerAuth is a serving certificate (x509.ExtKeyUsageServerAuth);
	// it needs DNSNames or IPs.
	ServerAuth Usage = 1 << iota
	// ClientAuth is a client certificate (x509.ExtKeyUsageClientAuth);
	// the server reads the client's name from CommonName and its groups
	// from Organization.
	ClientAuth
)

// String returns "server", "client" or "server+client".
func (u Usage) String() string {
	switch u {
	case ServerAuth:
		return "server"
	case ClientAuth:
		return "client"
	case ServerAuth | ClientAuth:
		return "server+client"
	}
	return fmt.Sprintf("Usage(%d)", uint8(u))
}

// Request describes a certificate to issue.
type Request struct {
	// CommonName is the certificate's subject: the user or cluster a
	// client certificate names, or a label for a serving certificate.
	// Required.
	CommonName string
	// Organization is the subject's organizations; Kubernetes reads them
	// as the client's groups ("system:masters"). Optional.
	Organization []string
	// DNSNames and IPs are the names a serving certificate is valid for
	// (Go's TLS checks these, never CommonName). A server certificate
	// needs at least one; a client certificate may have none.
	DNSNames []string
	IPs      []netip.Addr
	// Usage is ServerAuth, ClientAuth or both. Required.
	Usage Usage
	// Validity is how long the certificate stays valid from now; zero
	// means DefaultValidity. It may not reach past the CA's NotAfter.
	Validity time.Duration
}

// Pair is a certificate and its private key, PEM-encoded.
type Pair struct {
	// CertPEM is one CERTIFICATE block.
	CertPEM []byte
	// KeyPEM is one private key block (EC PRIVATE KEY for keys this
	// package makes).
	KeyPEM []byte
}

// CA is a certificate authority: its certificate and the key that signs
// with it. It is not changed after NewCA or LoadCA; its methods are safe
// for concurrent use.
type CA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pair Pair
}

// NewCA makes a self-signed CA with a fresh ECDSA P-256 key.
func NewCA(opts Options) (*CA, error) {
	if opts.CommonName == "" {
		opts.CommonName = "meshplane CA"
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultCAValidity
	}
	if opts.Validity < 0 {
		return nil, fmt.Errorf("new CA %q: %w: validity %v is negative: give a positive duration, or zero for %v",
			opts.CommonName, ErrInvalidRequest, opts.Validity, DefaultCAValidity)
	}
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", opts.CommonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", opts.CommonName, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: opts.CommonName},
		NotBefore:    now.Add(-ClockSkew),
		NotAfter:     now.Add(opts.Validity),
		IsCA:         true, BasicConstraintsValid: true,
		// The CA signs leaves only: no intermediate CAs below it.
		MaxPathLen: 0, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: create certificate: %w", opts.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: parse certificate: %w", opts.CommonName, err)
	}
	return &CA{cert: cert, key: key, pair: Pair{CertPEM: encodeCert(der), KeyPEM: keyPEM}}, nil
}

// LoadCA returns the CA whose certificate and key are given as PEM (the
// files a person keeps, or that Pair wrote). The key may be EC (SEC 1),
// PKCS #1 RSA or PKCS #8; it must be the certificate's, and the
// certificate must be a CA (ErrKeyMismatch, ErrNotCA). An expired CA
// loads, so that status can report it, but issues nothing.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	name := cert.Subject.CommonName
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("load CA: certificate %q: %w (its basic constraints do not say CA:TRUE): pass the CA's certificate, not one it issued", name, ErrNotCA)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("load CA: certificate %q: %w (its key usage lacks certificate signing): pass a CA made to sign certificates", name, ErrNotCA)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA %q: %w", name, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load CA %q: %w: pass the key that was made with this certificate", name, ErrKeyMismatch)
	}
	return &CA{cert: cert, key: key, pair: Pair{CertPEM: encodeCert(cert.Raw), KeyPEM: keyPEM}}, nil
}

// Certificate returns the CA's certificate. The caller must not change it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM returns the CA's certificate as one PEM block: what peers
// trust.
func (ca *CA) CertPEM() []byte { return ca.pair.CertPEM }

// Pair returns the CA's certificate and key, to keep in files
// (Pair.WriteFiles) and load again with LoadCA.
func (ca *CA) Pair() Pair { return ca.pair }

// CertPool returns a pool holding only the CA's certificate, for a
// tls.Config's RootCAs or ClientCAs.
func (ca *CA) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool
}

// Issue makes a fresh ECDSA P-256 key and a certificate for it, signed by
// the CA, as req describes. A request that cannot make a useful
// certificate wraps ErrInvalidRequest; one that would stay valid after
// the CA expires wraps ErrOutlivesCA.
func (ca *CA) Issue(req Request) (Pair, error) {
	if err := checkRequest(&req); err != nil {
		return Pair{}, fmt.Errorf("issue %q: %w", req.CommonName, err)
	}
	key, keyPEM, err := newKey()
	if err != nil {
		return Pair{}, fmt.Errorf("issue %q: %w", req.CommonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return Pair{}, fmt.Errorf("issue %q: %w", req.CommonName, err)
	}
	now := time.Now()
	notAfter := now.Add(req.Validity)
	if notAfter.After(ca.cert.NotAfter) {
		return Pair{}, fmt.Errorf("issue %q: %w: valid until %s, but the CA %q expires at %s: ask for at most %v, or renew the CA",
			req.CommonName, ErrOutlivesCA, notAfter.UTC().Format(time.RFC3339), ca.cert.Subject.CommonName,
			ca.cert.NotAfter.UTC().Format(time.RFC3339), ca.cert.NotAfter.Sub(now).Truncate(time.Second))
	}
	notBefore := now.Add(-ClockSkew)
	if notBefore.Before(ca.cert.NotBefore) {
		// A leaf valid before its CA would fail verification in that
		// window anyway; start it with the CA.
		notBefore = ca.cert.NotBefore
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.CommonName, Organization: req.Organization},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		// ECDSA keys sign; they do not encipher keys (that is RSA key
		// transport), so DigitalSignature is the one usage.
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		DNSNames:              req.DNSNames,
	}
	if req.Usage&ServerAuth != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if req.Usage&ClientAuth != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, ip := range req.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.Unmap().AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return Pair{}, fmt.Errorf("issue %q: create certificate: %w", req.CommonName, err)
	}
	return Pair{CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// checkRequest validates req and fills in its defaults.
func checkRequest(req *Request) error {
	if req.CommonName == "" {
		return fmt.Errorf("%w: no CommonName: name the client, cluster or server the certificate is for", ErrInvalidRequest)
	}
	if req.Usage == 0 || req.Usage&^(ServerAuth|ClientAuth) != 0 {
		return fmt.Errorf("%w: usage %v: give ServerAuth, ClientAuth or both", ErrInvalidRequest, req.Usage)
	}
	if req.Usage&ServerAuth != 0 && len(req.DNSNames) == 0 && len(req.IPs) == 0 {
		return fmt.Errorf("%w: a server certificate without DNSNames or IPs: give the names clients dial (TLS ignores CommonName)", ErrInvalidRequest)
	}
	for _, ip := range req.IPs {
		if !ip.IsValid() {
			return fmt.Errorf("%w: the zero netip.Addr in IPs: give the addresses clients dial", ErrInvalidRequest)
		}
	}
	if req.Validity < 0 {
		return fmt.Errorf("%w: validity %v is negative: give a positive duration, or zero for %v", ErrInvalidRequest, req.Validity, DefaultValidity)
	}
	if req.Validity == 0 {
		req.Validity = DefaultValidity
	}
	return nil
}

// newKey returns a fresh ECDSA P-256 key and its PEM.
func newKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// serialLimit is 2^128: serial numbers are random 128-bit numbers.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// newSerial returns a random positive serial number below 2^128.
func newSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		// RFC 5280 wants a positive serial; zero comes once in 2^128.
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
