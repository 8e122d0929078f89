package kubetest

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
	"testing"
	"time"

	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// Server is a running kube-apiserver for tests.
type Server struct {
	// Host is the apiserver's URL, https://127.0.0.1:PORT.
	Host string
	// CAPEM is the CA that signed the serving certificate; CAFile holds it.
	CAPEM  []byte
	CAFile string
	// AdminToken authenticates as kubetest-admin, in system:masters.
	AdminToken string
	// Kubeconfig is a kubeconfig file for the admin user.
	Kubeconfig string
	// EtcdPrefix is this apiserver's --etcd-prefix.
	EtcdPrefix string
	// Etcd is the embedded etcd RunMain started the apiserver on; nil
	// for Start.
	Etcd *etcdtest.Server

	skip    error // RunMain found no binary: Require skips
	dir     string
	logFile string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has been waited for
	bin     string        // the binary and arguments of the running
	args    []string      // process, for Restart
	client  *http.Client
	users   []User
	grants  atomic.Int64

	mu       sync.Mutex // mu guards nextUser
	nextUser int
	stopOnce sync.Once
}

// User is a user of the static token file with no permissions of its own:
// only what system:authenticated may do (discovery, self reviews) until a
// test grants it more.
type User struct {
	Name  string
	Token string
}

// Rule is a cluster-wide RBAC permission, as in a ClusterRole.
type Rule struct {
	APIGroups []string // "" is the core group
	Resources []string
	Verbs     []string
}

// Users in the token file besides the admin: each test that needs a
// limited user takes its own (NewUser), so that grants do not mix.
const userCount = 64

// AdminUser is the admin's user name.
const AdminUser = "kubetest-admin"

var seq atomic.Int64

// Start starts a kube-apiserver against the etcd at etcdEndpoints, under an
// etcd prefix of its own, and waits until it is ready. It is stopped when
// the test ends. Without the binary the test is skipped (it fails when
// MESHPLANE_REQUIRE_KUBE is set).
func Start(tb testing.TB, etcdEndpoints []string) *Server {
	tb.Helper()
	bin, err := Find()
	if err != nil {
		skipOrFail(tb, err)
	}
	s, err := start(bin, tb.TempDir(), etcdEndpoints)
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// Require skips the test (or fails it, with MESHPLANE_REQUIRE_KUBE set) when
// RunMain found no kube-apiserver binary. Tests of a package whose
// TestMain is RunMain call it first.
func (s *Server) Require(tb testing.TB) {
	tb.Helper()
	if s == nil {
		tb.Fatal("kubetest: no server: call kubetest.RunMain in TestMain")
	}
	if s.skip != nil {
		skipOrFail(tb, s.skip)
	}
}

func required() bool { return os.Getenv("MESHPLANE_REQUIRE_KUBE") != "" }

func skipOrFail(tb testing.TB, err error) {
	tb.Helper()
	if required() {
		tb.Fatalf("kubetest: %v (MESHPLANE_REQUIRE_KUBE is set)", err)
	}
	tb.Skipf("kubetest: %v", err)
}

func start(bin, dir string, etcdEndpoints []string) (*Server, error) {
	if len(etcdEndpoints) == 0 {
		return nil, errors.New("no etcd endpoints")
	}
	p, err := newPKI(dir)
	if err != nil {
		return nil, fmt.Errorf("make certificates: %w", err)
	}
	s := &Server{
		CAPEM: p.caPEM, CAFile: p.caFile, dir: dir,
		EtcdPrefix: fmt.Sprintf("/kubetest-%d-%d-%d", os.Getpid(), seq.Add(1), time.Now().UnixNano()%1e6),
		logFile:    filepath.Join(dir, "kube-apiserver.log"),
	}
	tokenFile, err := s.writeTokens()
	if err != nil {
		return nil, fmt.Errorf("write token file: %w", err)
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
			"--etcd-servers=" + strings.Join(etcdEndpoints, ","),
			"--etcd-prefix=" + s.EtcdPrefix,
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--cert-dir=" + filepath.Join(dir, "certs"),
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
			return nil, err
		}
		break
	}
	s.Kubeconfig, err = s.writeKubeconfig("admin", AdminUser, s.AdminToken)
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
	for i := range userCount {
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
	// Dies with the test binary, even when that is killed.
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
		code, body, err := s.request(ctx, s.AdminToken, http.MethodGet, "/readyz", nil)
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
			return fmt.Errorf("kube-apiserver exited before it was ready (%v); its log:\n%s", cmd.ProcessState, s.logTail())
		case <-ctx.Done():
			s.Stop()
			return fmt.Errorf("kube-apiserver not ready within 3m (last /readyz: %s); its log:\n%s", last, s.logTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop kills the apiserver (by its PID) and waits for it to exit. Its
// directory is removed with the test's (or RunMain's) temp dirs. It is
// idempotent.
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

// Kill kills the apiserver (by its PID, SIGKILL) and waits for it to exit,
// keeping its directory, port and credentials for Restart: an outage of
// the API server as its clients see it. Neither Kill nor Restart may be
// called concurrently with each other or with Stop.
func (s *Server) Kill() {
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		<-s.exited
		s.cmd = nil
	}
	s.client.CloseIdleConnections()
}

// Restart starts the apiserver that Kill stopped again, on the same port,
// etcd prefix and credentials (so kubeconfigs stay valid), and waits until
// it is ready.
func (s *Server) Restart() error {
	if s.cmd != nil {
		return errors.New("kubetest: Restart of a running apiserver: Kill it first")
	}
	return s.run(s.bin, s.args)
}

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

// NewUser returns a user no other test of this server has had: it may do
// only what system:authenticated may until Grant gives it more.
func (s *Server) NewUser(tb testing.TB) User {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nextUser == len(s.users) {
		tb.Fatalf("kubetest: all %d users are taken; raise userCount", len(s.users))
	}
	u := s.users[s.nextUser]
	s.nextUser++
	return u
}

// KubeconfigFor writes a kubeconfig file for u and returns its path.
func (s *Server) KubeconfigFor(tb testing.TB, u User) string {
	tb.Helper()
	p, err := s.writeKubeconfig(u.Name, u.Name, u.Token)
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	return p
}

func (s *Server) writeKubeconfig(file, user, token string) (string, error) {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: %s
current-context: kubetest
`, s.Host, base64.StdEncoding.EncodeToString(s.CAPEM), user, token, user)
	p := filepath.Join(s.dir, file+".kubeconfig")
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		return "", fmt.Errorf("write kubeconfig: %w", err)
	}
	return p, nil
}

// Grant gives u the rules cluster-wide (a ClusterRole and a
// ClusterRoleBinding) and returns once the apiserver's authorizer allows
// every verb on every resource in them.
func (s *Server) Grant(tb testing.TB, u User, rules ...Rule) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := fmt.Sprintf("kubetest-%s-%d", u.Name, s.grants.Add(1))
	var rs []map[string]any
	for _, r := range rules {
		rs = append(rs, map[string]any{"apiGroups": r.APIGroups, "resources": r.Resources, "verbs": r.Verbs})
	}
	role := map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
		"metadata": map[string]any{"name": name}, "rules": rs,
	}
	binding := map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
		"metadata": map[string]any{"name": name},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
		"subjects": []map[string]any{{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u.Name}},
	}
	if err := s.Create(ctx, "/apis/rbac.authorization.k8s.io/v1/clusterroles", role); err != nil {
		tb.Fatalf("kubetest: grant: %v", err)
	}
	if err := s.Create(ctx, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding); err != nil {
		tb.Fatalf("kubetest: grant: %v", err)
	}
	// The RBAC authorizer reads roles from an informer: wait until it has
	// these.
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if err := s.waitAllowed(ctx, u.Name, g, res, v); err != nil {
						tb.Fatalf("kubetest: grant: %v", err)
					}
				}
			}
		}
	}
}

func (s *Server) waitAllowed(ctx context.Context, user, group, resource, verb string) error {
	review := map[string]any{
		"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
		"spec": map[string]any{
			"user":               user,
			"resourceAttributes": map[string]any{"group": group, "resource": resource, "verb": verb},
		},
	}
	for {
		var out struct {
			Status struct {
				Allowed bool `json:"allowed"`
			} `json:"status"`
		}
		code, body, err := s.request(ctx, s.AdminToken, http.MethodPost, "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
		if err != nil {
			return err
		}
		if code != http.StatusCreated && code != http.StatusOK {
			return fmt.Errorf("subject access review: %d %s", code, body)
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return fmt.Errorf("subject access review: %w", err)
		}
		if out.Status.Allowed {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s may still not %s %s in group %q: %w", user, verb, resource, group, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var nsSeq atomic.Int64

// Namespace creates a namespace no other test of this binary uses and
// returns its name. Namespaces are not deleted: without a controller
// manager they would only stay Terminating.
func (s *Server) Namespace(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("kt-%d-%d", os.Getpid()%100000, nsSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name}}
	if err := s.Create(ctx, "/api/v1/namespaces", ns); err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	return name
}

// Create POSTs obj (marshaled to JSON) to path as the admin.
func (s *Server) Create(ctx context.Context, path string, obj any) error {
	code, body, err := s.request(ctx, s.AdminToken, http.MethodPost, path, obj)
	if err != nil {
		return err
	}
	if code != http.StatusCreated && code != http.StatusOK {
		return fmt.Errorf("create %s: %d %s", path, code, body)
	}
	return nil
}

func (s *Server) request(ctx context.Context, token, method, path string, obj any) (int, []byte, error) {
	var in io.Reader
	if obj != nil {
		b, err := json.Marshal(obj)
		if err != nil {
			return 0, nil, err
		}
		in = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.Host+path, in)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if obj != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}
