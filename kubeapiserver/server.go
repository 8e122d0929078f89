package kubeapiserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config says how to start a kube-apiserver.
type Config struct {
	// Binary is the kube-apiserver binary; empty means Find's.
	Binary string
	// Dir holds the apiserver's files: certificates, token file,
	// kubeconfigs, log. It must exist; the caller removes it.
	Dir string
	// EtcdEndpoints are the etcd client URLs the apiserver stores in.
	EtcdEndpoints []string
}

// ErrConfig is wrapped by Start's errors about its Config.
var ErrConfig = errors.New("kubeapiserver: bad config")

// Server is a running kube-apiserver.
type Server struct {
	// Host is the apiserver's URL, https://127.0.0.1:PORT.
	Host string
	// CAPEM is the CA that signed the serving certificate; CAFile holds it.
	CAPEM  []byte
	CAFile string
	// AdminToken authenticates as AdminUser, in system:masters.
	AdminToken string
	// Kubeconfig is a kubeconfig file for the admin user.
	Kubeconfig string
	// EtcdPrefix is this apiserver's --etcd-prefix.
	EtcdPrefix string

	dir      string
	logFile  string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has been waited for
	bin      string        // the binary and arguments of the process,
	args     []string      // for Restart
	down     bool          // Kill stopped it; Restart starts it again
	client   *http.Client
	users    []User
	stopOnce sync.Once
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
// files WriteKubeconfig writes.
const ClusterName = "kubetest"

var seq atomic.Int64

// Start starts a kube-apiserver against the etcd at cfg.EtcdEndpoints,
// under an etcd prefix of its own, and waits until it is ready (up to 3
// minutes). The caller calls Stop, and removes cfg.Dir.
func Start(cfg Config) (*Server, error) {
	if len(cfg.EtcdEndpoints) == 0 {
		return nil, fmt.Errorf("%w: no etcd endpoints: set Config.EtcdEndpoints", ErrConfig)
	}
	if cfg.Dir == "" {
		return nil, fmt.Errorf("%w: no directory for the apiserver's files: set Config.Dir", ErrConfig)
	}
	bin := cfg.Binary
	if bin == "" {
		var err error
		if bin, err = Find(); err != nil {
			return nil, err
		}
	}
	p, err := newPKI(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("kubeapiserver: make certificates: %w", err)
	}
	s := &Server{
		CAPEM: p.caPEM, CAFile: p.caFile, dir: cfg.Dir,
		EtcdPrefix: fmt.Sprintf("/kubeapiserver-%d-%d-%d", os.Getpid(), seq.Add(1), time.Now().UnixNano()%1e6),
		logFile:    filepath.Join(cfg.Dir, "kube-apiserver.log"),
	}
	tokenFile, err := s.writeTokens()
	if err != nil {
		return nil, fmt.Errorf("kubeapiserver: write token file: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)
	s.client = &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		Timeout:   30 * time.Second,
	}
	// The free port is picked by closing a listener, so another process can
	// take it before the apiserver binds it: try again on a fresh port then.
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.Host = "https://127.0.0.1:" + strconv.Itoa(port)
		args := []string{
			"--etcd-servers=" + strings.Join(cfg.EtcdEndpoints, ","),
			"--etcd-prefix=" + s.EtcdPrefix,
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--cert-dir=" + filepath.Join(cfg.Dir, "certs"),
			"--tls-cert-file=" + p.certFile, "--tls-private-key-file=" + p.keyFile,
			"--token-auth-file=" + tokenFile,
			"--service-account-key-file=" + p.saPublicFile,
			"--service-account-signing-key-file=" + p.saSignerFile,
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-cluster-ip-range=10.96.0.0/16",
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
		s.bin, s.args = bin, args
		if err := s.run(bin, args); err != nil {
			if attempt < 2 && strings.Contains(s.logTail(), "address already in use") {
				continue
			}
			return nil, fmt.Errorf("kubeapiserver: %w", err)
		}
		break
	}
	s.Kubeconfig, err = s.WriteKubeconfig("admin", AdminUser, s.AdminToken)
	if err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) writeTokens() (string, error) {
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
		s.users = append(s.users, u)
		fmt.Fprintf(&b, "%s,%s,uid-user-%d\n", u.Token, u.Name, i)
	}
	path := filepath.Join(s.dir, "tokens.csv")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// run starts the process and waits until /readyz answers ok.
func (s *Server) run(bin string, args []string) error {
	log, err := os.Create(s.logFile)
	if err != nil {
		return err
	}
	defer func() { _ = log.Close() }()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	// Dies with the process that started it, even when that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var last string
	for {
		code, body, err := s.Request(ctx, s.AdminToken, http.MethodGet, "/readyz", nil)
		switch {
		case err == nil && code == http.StatusOK:
			return nil
		case err != nil:
			last = err.Error()
		default:
			last = fmt.Sprintf("%d %s", code, body)
		}
		select {
		case <-exited:
			s.client.CloseIdleConnections()
			return fmt.Errorf("kube-apiserver exited before it was ready (%v); its log:\n%s", cmd.ProcessState, s.logTail())
		case <-ctx.Done():
			s.Stop()
			return fmt.Errorf("kube-apiserver not ready within 3m (last /readyz: %s); its log:\n%s", last, s.logTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop kills the apiserver (by its PID) and waits for it to exit. It
// leaves Dir. It is idempotent.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd != nil {
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		if s.client != nil {
			s.client.CloseIdleConnections()
		}
	})
}

// Kill kills the apiserver (SIGKILL, by its PID) and waits for it to
// exit, keeping its directory, port, etcd prefix and credentials for
// Restart: an outage of the API server as its clients see it. Kill,
// Restart and Stop must not be called concurrently.
func (s *Server) Kill() {
	if s.cmd != nil && !s.down {
		_ = s.cmd.Process.Kill()
		<-s.exited
		s.down = true
	}
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
}

// Restart starts the apiserver that Kill stopped again, with the same
// arguments (so kubeconfigs stay valid), and waits until it is ready.
func (s *Server) Restart() error {
	if !s.down {
		return errors.New("kubeapiserver: Restart of a running apiserver: Kill it first")
	}
	s.down = false
	if err := s.run(s.bin, s.args); err != nil {
		return fmt.Errorf("kubeapiserver: %w", err)
	}
	return nil
}

// PID is the apiserver process's ID.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Log returns the apiserver's log so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

func (s *Server) logTail() string {
	lines := strings.Split(strings.TrimRight(s.Log(), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

// Users returns the limited users of the token file (UserCount of them),
// in a fixed order. Whoever hands them out keeps grants apart: kubetest
// gives each test its own.
func (s *Server) Users() []User { return append([]User(nil), s.users...) }

// User returns the limited user named name.
func (s *Server) User(name string) (User, bool) {
	for _, u := range s.users {
		if u.Name == name {
			return u, true
		}
	}
	return User{}, false
}

// WriteKubeconfig writes a kubeconfig file for user, who authenticates
// with token, as <file>.kubeconfig in Dir, and returns its path.
func (s *Server) WriteKubeconfig(file, user, token string) (string, error) {
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
`, ClusterName, s.Host, base64.StdEncoding.EncodeToString(s.CAPEM), user, token)
	p := filepath.Join(s.dir, file+".kubeconfig")
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		return "", fmt.Errorf("kubeapiserver: write kubeconfig: %w", err)
	}
	return p, nil
}

// Create POSTs obj (marshaled to JSON) to path as the admin.
func (s *Server) Create(ctx context.Context, path string, obj any) error {
	code, body, err := s.Request(ctx, s.AdminToken, http.MethodPost, path, obj)
	if err != nil {
		return err
	}
	if code != http.StatusCreated && code != http.StatusOK {
		return fmt.Errorf("kubeapiserver: create %s: %d %s", path, code, body)
	}
	return nil
}

// Request sends method path to the apiserver as the user of token, with
// obj marshaled to JSON as the body (none if obj is nil), and returns the
// response's status code and body. A status that is not 2xx is not an
// error: the caller judges the code.
func (s *Server) Request(ctx context.Context, token, method, path string, obj any) (int, []byte, error) {
	var in io.Reader
	if obj != nil {
		b, err := json.Marshal(obj)
		if err != nil {
			return 0, nil, fmt.Errorf("kubeapiserver: %s %s: %w", method, path, err)
		}
		in = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.Host+path, in)
	if err != nil {
		return 0, nil, fmt.Errorf("kubeapiserver: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if obj != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("kubeapiserver: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("kubeapiserver: %s %s: %w", method, path, err)
	}
	return resp.StatusCode, body, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("kubeapiserver: pick a port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}
