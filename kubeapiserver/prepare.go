package kubeapiserver

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Config says how to set up (Prepare) and start (Start) a kube-apiserver.
type Config struct {
	// Binary is the kube-apiserver binary Start runs; empty means Find's.
	// Prepare ignores it: its caller runs the binary it likes.
	Binary string
	// Dir holds the apiserver's files: certificates, token file,
	// kubeconfigs, --cert-dir and (Start) its log. Required; Prepare
	// creates it and makes it absolute. The caller removes it.
	Dir string
	// EtcdEndpoints are the etcd client URLs (http:// or unix://) the
	// apiserver stores in. Required.
	EtcdEndpoints []string
	// EtcdPrefix is the apiserver's --etcd-prefix; empty means one of its
	// own (/kubeapiserver-<pid>-<n>-<time>).
	EtcdPrefix string
	// ServiceCIDR is the --service-cluster-ip-range; zero means
	// 10.96.0.0/16.
	ServiceCIDR netip.Prefix
	// ServingIPs are IP addresses the serving certificate is valid for
	// besides 127.0.0.1: the address it advertises, its Service's
	// ClusterIP, for clients that reach it there (kubenode's pods). None
	// means loopback only.
	ServingIPs []netip.Addr
	// ExtraUsers are users of the token file besides the admin and the
	// limited ones, each with its groups: the identities of a kubelet
	// (system:node:<name> in system:nodes), a controller manager and a
	// scheduler, which the built-in RBAC bindings and the Node authorizer
	// know by name. Prepare gives each a token (Setup.ExtraUsers).
	ExtraUsers []Identity
}

// Identity is a user of the token file with groups: Config.ExtraUsers.
type Identity struct {
	Name   string
	Groups []string
}

// ErrConfig is wrapped by Prepare's and Start's errors about their Config.
var ErrConfig = errors.New("kubeapiserver: bad config")

// DefaultServiceCIDR is the service range of a Config without one.
var DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")

func (c Config) validate() error {
	if len(c.EtcdEndpoints) == 0 {
		return fmt.Errorf("%w: no etcd endpoints: set Config.EtcdEndpoints", ErrConfig)
	}
	if c.Dir == "" {
		return fmt.Errorf("%w: no directory for the apiserver's files: set Config.Dir", ErrConfig)
	}
	return nil
}

// Setup is a prepared apiserver: its files are in Config.Dir, and Args
// start it. Nothing runs yet.
type Setup struct {
	// Dir holds its files: Config.Dir, absolute.
	Dir string
	// Args are the apiserver's flags (without the binary).
	Args []string
	// Host is its URL, https://127.0.0.1:PORT.
	Host string
	// CAPEM is the CA that signed the serving certificate; CAFile holds it.
	CAPEM  []byte
	CAFile string
	// AdminToken authenticates as AdminUser, in system:masters.
	AdminToken string
	// Kubeconfig is a kubeconfig file for the admin user.
	Kubeconfig string
	// EtcdPrefix is the apiserver's --etcd-prefix.
	EtcdPrefix string
	// Users are the limited users of the token file (UserCount of them).
	Users []User
	// ExtraUsers are Config.ExtraUsers with their tokens, in order.
	ExtraUsers []User
	// ServiceAccountKeyFile is the private key that signs service-account
	// tokens (--service-account-signing-key-file): a controller manager's
	// --service-account-private-key-file.
	ServiceAccountKeyFile string
}

// User is a user of the static token file with no permissions of its own:
// only what system:authenticated may do (discovery, self reviews) until it
// is granted more (RBAC).
type User struct {
	Name  string
	Token string
}

// UserCount is how many limited users the token file has besides the admin.
const UserCount = 64

// AdminUser is the admin's user name. (The names keep kubetest's, which
// tests and kubeconfigs written before the split use.)
const AdminUser = "kubetest-admin"

// ClusterName is the cluster's (and the context's) name in the kubeconfig
// files Prepare and WriteKubeconfig write.
const ClusterName = "kubetest"

var seq atomic.Int64

// Prepare writes what one apiserver needs into cfg.Dir (a CA and a
// serving certificate for 127.0.0.1, a service-account key pair, a static
// token file with the admin and UserCount limited users, the admin's
// kubeconfig) and returns its command line, on a loopback port free now.
// It starts nothing: Start runs the Setup as a child that dies with its
// parent; the lab runs it detached. Another process may take the port
// before the apiserver binds it: the caller may Prepare again then (its
// log says "address already in use").
func Prepare(cfg Config) (Setup, error) {
	if err := cfg.validate(); err != nil {
		return Setup{}, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return Setup{}, fmt.Errorf("kubeapiserver: dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Setup{}, fmt.Errorf("kubeapiserver: dir: %w", err)
	}
	if cfg.EtcdPrefix == "" {
		cfg.EtcdPrefix = fmt.Sprintf("/kubeapiserver-%d-%d-%d", os.Getpid(), seq.Add(1), time.Now().UnixNano()%1e6)
	}
	if !cfg.ServiceCIDR.IsValid() {
		cfg.ServiceCIDR = DefaultServiceCIDR
	}
	for _, id := range cfg.ExtraUsers {
		if id.Name == "" || strings.ContainsAny(id.Name+strings.Join(id.Groups, ""), ",\"\n") {
			return Setup{}, fmt.Errorf("%w: extra user %q (groups %q): a name is required, and names and groups may not hold commas, quotes or newlines", ErrConfig, id.Name, id.Groups)
		}
	}
	p, err := writePKI(dir, cfg.ServingIPs)
	if err != nil {
		return Setup{}, fmt.Errorf("kubeapiserver: make certificates: %w", err)
	}
	s := Setup{Dir: dir, CAPEM: p.caPEM, CAFile: p.caFile, EtcdPrefix: cfg.EtcdPrefix, ServiceAccountKeyFile: p.saSignerFile}
	tokenFile, err := s.writeTokens(dir, cfg.ExtraUsers)
	if err != nil {
		return Setup{}, fmt.Errorf("kubeapiserver: write token file: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return Setup{}, err
	}
	s.Host = "https://127.0.0.1:" + strconv.Itoa(port)
	s.Args = []string{
		"--etcd-servers=" + strings.Join(cfg.EtcdEndpoints, ","),
		"--etcd-prefix=" + cfg.EtcdPrefix,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(dir, "certs"),
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
		// No kubelet or endpoints controller: the apiserver need not
		// publish itself in the kubernetes Service's endpoints.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	}
	s.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(s.Kubeconfig, s.Host, s.CAPEM, AdminUser, s.AdminToken); err != nil {
		return Setup{}, err
	}
	return s, nil
}

func (s *Setup) writeTokens(dir string, extra []Identity) (string, error) {
	var b strings.Builder
	tok, err := newToken()
	if err != nil {
		return "", err
	}
	s.AdminToken = tok
	fmt.Fprintf(&b, "%s,%s,uid-admin,\"system:masters\"\n", tok, AdminUser)
	for i := range UserCount {
		tok, err := newToken()
		if err != nil {
			return "", err
		}
		u := User{Name: fmt.Sprintf("kubetest-user-%d", i), Token: tok}
		s.Users = append(s.Users, u)
		fmt.Fprintf(&b, "%s,%s,uid-user-%d\n", u.Token, u.Name, i)
	}
	for i, id := range extra {
		tok, err := newToken()
		if err != nil {
			return "", err
		}
		s.ExtraUsers = append(s.ExtraUsers, User{Name: id.Name, Token: tok})
		fmt.Fprintf(&b, "%s,%s,uid-extra-%d", tok, id.Name, i)
		if len(id.Groups) > 0 {
			fmt.Fprintf(&b, ",\"%s\"", strings.Join(id.Groups, ","))
		}
		b.WriteString("\n")
	}
	path := filepath.Join(dir, "tokens.csv")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// writeKubeconfig writes a kubeconfig file at path for user, who
// authenticates with token, of the apiserver at host.
func writeKubeconfig(path, host string, caPEM []byte, user, token string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]s
    certificate-authority-data: %[3]s
users:
- name: %[4]s
  user:
    token: %[5]s
contexts:
- name: %[1]s
  context:
    cluster: %[1]s
    user: %[4]s
current-context: %[1]s
`, ClusterName, host, base64.StdEncoding.EncodeToString(caPEM), user, token)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		return fmt.Errorf("kubeapiserver: write kubeconfig: %w", err)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("kubeapiserver: pick a port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WriteKubeconfig writes a kubeconfig file for user, who authenticates
// with token, as <file>.kubeconfig in Dir, and returns its path: what
// Server.WriteKubeconfig does, before the process runs (kubenode writes
// the kubelet's, the controller manager's and the scheduler's).
func (s Setup) WriteKubeconfig(file, user, token string) (string, error) {
	p := filepath.Join(s.Dir, file+".kubeconfig")
	if err := writeKubeconfig(p, s.Host, s.CAPEM, user, token); err != nil {
		return "", err
	}
	return p, nil
}
