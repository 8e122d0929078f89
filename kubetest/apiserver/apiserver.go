package apiserver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Version is the Kubernetes version tools/kube-apiserver/go.mod pins; the
// binary's cache path carries it.
const Version = "v1.37.2"

// BuildCommand is the command that builds the binary Find looks for.
const BuildCommand = "make kube-apiserver"

// ErrNotBuilt is returned by Find when there is no kube-apiserver binary.
var ErrNotBuilt = errors.New("kube-apiserver not built")

// CachePath is where `make kube-apiserver` puts the binary:
// ${MESHPLANE_CACHE:-$HOME/.cache/meshplane}/kube-apiserver-<Version>.
func CachePath() (string, error) {
	dir := os.Getenv("MESHPLANE_CACHE")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("kube-apiserver cache: %w; set MESHPLANE_CACHE", err)
		}
		dir = filepath.Join(home, ".cache", "meshplane")
	}
	return filepath.Join(dir, "kube-apiserver-"+Version), nil
}

// Find returns the path of the kube-apiserver binary:
// $MESHPLANE_KUBE_APISERVER if set, else CachePath. The error wraps
// ErrNotBuilt and says how to build it.
func Find() (string, error) {
	if p := os.Getenv("MESHPLANE_KUBE_APISERVER"); p != "" {
		if err := executable(p); err != nil {
			return "", fmt.Errorf("%w: MESHPLANE_KUBE_APISERVER=%s: %w", ErrNotBuilt, p, err)
		}
		return p, nil
	}
	p, err := CachePath()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNotBuilt, err)
	}
	if err := executable(p); err != nil {
		return "", fmt.Errorf("%w: no %s: run `%s` (or set MESHPLANE_KUBE_APISERVER)", ErrNotBuilt, p, BuildCommand)
	}
	return p, nil
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// Config is one apiserver's set-up.
type Config struct {
	// Dir receives the certificates, the token file, the kubeconfig and
	// the apiserver's --cert-dir. Required, absolute.
	Dir string
	// EtcdServers are the etcd client URLs (http:// or unix://). Required.
	EtcdServers []string
	// EtcdPrefix is the apiserver's --etcd-prefix. Required.
	EtcdPrefix string
	// ServiceCIDR is the --service-cluster-ip-range. Required.
	ServiceCIDR netip.Prefix
}

// Setup is a prepared apiserver.
type Setup struct {
	// Args are the apiserver's flags (without the binary).
	Args []string
	// Host is its URL, https://127.0.0.1:PORT.
	Host string
	// CAFile holds the CA of its serving certificate.
	CAFile string
	// Token authenticates as the admin (system:masters).
	Token string
	// Kubeconfig is the admin's kubeconfig file.
	Kubeconfig string
}

// Prepare writes what the apiserver needs into cfg.Dir and returns its
// command line, on a loopback port free now (another process may take it
// before the apiserver binds it: the caller may Prepare again then).
func Prepare(cfg Config) (Setup, error) {
	if cfg.Dir == "" || len(cfg.EtcdServers) == 0 || cfg.EtcdPrefix == "" || !cfg.ServiceCIDR.IsValid() {
		return Setup{}, errors.New("kube-apiserver: needs a dir, etcd servers, an etcd prefix and a service CIDR")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return Setup{}, fmt.Errorf("kube-apiserver dir: %w", err)
	}
	p, err := newPKI(cfg.Dir)
	if err != nil {
		return Setup{}, fmt.Errorf("kube-apiserver certificates: %w", err)
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return Setup{}, fmt.Errorf("kube-apiserver token: %w", err)
	}
	s := Setup{Token: hex.EncodeToString(b), CAFile: p.caFile}
	tokenFile := filepath.Join(cfg.Dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(s.Token+",admin,uid-admin,\"system:masters\"\n"), 0o600); err != nil {
		return Setup{}, fmt.Errorf("kube-apiserver token file: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Setup{}, fmt.Errorf("kube-apiserver: pick a port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s.Host = "https://127.0.0.1:" + strconv.Itoa(port)
	s.Args = []string{
		"--etcd-servers=" + strings.Join(cfg.EtcdServers, ","),
		"--etcd-prefix=" + cfg.EtcdPrefix,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(cfg.Dir, "certs"),
		"--tls-cert-file=" + p.certFile, "--tls-private-key-file=" + p.keyFile,
		"--token-auth-file=" + tokenFile,
		"--service-account-key-file=" + p.saPublicFile,
		"--service-account-signing-key-file=" + p.saSignerFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + cfg.ServiceCIDR.String(),
		"--authorization-mode=RBAC",
		// ServiceAccount admission needs each namespace's default
		// service account, which the controller manager makes.
		"--disable-admission-plugins=ServiceAccount",
		// No kubelet or endpoints controller.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: lab
  context:
    cluster: lab
    user: admin
current-context: lab
`, s.Host, base64.StdEncoding.EncodeToString(p.caPEM), s.Token)
	s.Kubeconfig = filepath.Join(cfg.Dir, "admin.kubeconfig")
	if err := os.WriteFile(s.Kubeconfig, []byte(kc), 0o600); err != nil {
		return Setup{}, fmt.Errorf("kube-apiserver kubeconfig: %w", err)
	}
	return s, nil
}

// Client is the admin's HTTPS+JSON client of an apiserver.
type Client struct {
	host, token string
	http        *http.Client
}

// NewClient returns a client of the apiserver s describes.
func NewClient(s Setup) (*Client, error) {
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("kube-apiserver CA %s: no certificate", s.CAFile)
	}
	return &Client{host: s.Host, token: s.Token, http: &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		Timeout:   30 * time.Second,
	}}, nil
}

// Close closes the client's idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// StatusError is an answer of the apiserver other than success.
type StatusError struct {
	Method, Path string
	Code         int
	Body         string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Code, strings.TrimSpace(e.Body))
}

// IsNotFound reports whether err is a 404 of the apiserver.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Do sends a request (body marshalled to JSON unless nil) and decodes a
// successful answer into out (unless nil).
func (c *Client) Do(ctx context.Context, method, path, contentType string, body, out any) error {
	var in io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		in = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.host+path, in)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &StatusError{Method: method, Path: path, Code: resp.StatusCode, Body: string(b)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return nil
}

// Apply creates or updates the object at path (its URL, with its name)
// by server-side apply, as fieldManager, forcing conflicts.
func (c *Client) Apply(ctx context.Context, path, fieldManager string, obj any) error {
	return c.Do(ctx, http.MethodPatch, path+"?fieldManager="+fieldManager+"&force=true", "application/apply-patch+yaml", obj, nil)
}

// Delete deletes the object at path; one that is not there is no error.
func (c *Client) Delete(ctx context.Context, path string) error {
	err := c.Do(ctx, http.MethodDelete, path, "", nil, nil)
	if IsNotFound(err) {
		return nil
	}
	return err
}

// WaitReady polls /readyz until it answers ok, exited reports that the
// process has ended, or ctx ends.
func (c *Client) WaitReady(ctx context.Context, exited func() bool) error {
	var last error
	for {
		err := c.Do(ctx, http.MethodGet, "/readyz", "", nil, nil)
		if err == nil {
			return nil
		}
		last = err
		if exited() {
			return fmt.Errorf("kube-apiserver exited before it was ready (last /readyz: %w)", last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready: %w (last /readyz: %w)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pki is a CA, a serving certificate it signed (for 127.0.0.1 and
// localhost) and a service-account key pair.
type pki struct {
	caPEM                      []byte
	caFile, certFile, keyFile  string
	saPublicFile, saSignerFile string
}

func newPKI(dir string) (pki, error) {
	p := pki{
		caFile: filepath.Join(dir, "ca.crt"), certFile: filepath.Join(dir, "apiserver.crt"),
		keyFile: filepath.Join(dir, "apiserver.key"), saPublicFile: filepath.Join(dir, "sa.pub"),
		saSignerFile: filepath.Join(dir, "sa.key"),
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshplane lab CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, err
	}
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(p.caFile, p.caPEM, 0o644); err != nil {
		return p, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	if err := writePEM(p.certFile, "CERTIFICATE", der); err != nil {
		return p, err
	}
	if err := writeKey(p.keyFile, key); err != nil {
		return p, err
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return p, err
	}
	if err := writePEM(p.saPublicFile, "PUBLIC KEY", pub); err != nil {
		return p, err
	}
	return p, writeKey(p.saSignerFile, sa)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
