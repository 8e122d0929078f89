// Package etcdtest starts real etcd servers for tests: an embedded one (the
// default, in-process, in a temp dir on loopback ports) or Debian's
// etcd-server binary as an external process. Like httptest, it hands back a
// server whose Config connects to it; tests isolate themselves by cluster
// name (Cluster), so one server serves many parallel tests.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/embedded"
)

// Server is a running etcd for a test.
type Server struct {
	tb  testing.TB
	dir string

	mu       sync.Mutex // mu guards inproc and cmd
	inproc   *embedded.Server
	cmd      *exec.Cmd
	ports    [2]int
	url      string
	external bool
	tls      *TLSFiles
}

// Start starts an embedded etcd that is stopped when the test ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{tb: tb, dir: tb.TempDir()}
	s.startEmbedded([2]int{})
	tb.Cleanup(s.Stop)
	return s
}

func (s *Server) startEmbedded(ports [2]int) {
	s.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := embedded.Start(ctx, s.dir, ports)
	if err != nil {
		s.tb.Fatalf("start embedded etcd: %v", err)
	}
	s.mu.Lock()
	s.inproc, s.ports, s.url = e, e.Ports(), e.ClientURL()
	s.mu.Unlock()
}

// ExternalBinary is where Debian's etcd-server package installs etcd.
const ExternalBinary = "/usr/bin/etcd"

// StartExternal starts Debian's etcd binary on loopback ports. The test is
// skipped when the binary is missing, unless MESHPLANE_REQUIRE_EXTERNAL_ETCD
// is set (CI sets it), in which case it fails.
func StartExternal(tb testing.TB) *Server {
	tb.Helper()
	requireExternal(tb)
	s := &Server{tb: tb, dir: tb.TempDir(), external: true}
	s.startExternal([2]int{})
	tb.Cleanup(s.Stop)
	return s
}

// StartExternalTLS is StartExternal with TLS on the client port and client
// certificates required: Config carries the CA and a client certificate.
func StartExternalTLS(tb testing.TB) *Server {
	tb.Helper()
	requireExternal(tb)
	s := &Server{tb: tb, dir: tb.TempDir(), external: true}
	files := NewTLSFiles(tb, s.dir)
	s.tls = &files
	s.startExternal([2]int{})
	tb.Cleanup(s.Stop)
	return s
}

// TLS returns the server's TLS files, or nil.
func (s *Server) TLS() *TLSFiles { return s.tls }

func requireExternal(tb testing.TB) {
	tb.Helper()
	if _, err := os.Stat(ExternalBinary); err != nil {
		if os.Getenv("MESHPLANE_REQUIRE_EXTERNAL_ETCD") != "" {
			tb.Fatalf("external etcd required but %s is missing: apt-get install etcd-server", ExternalBinary)
		}
		tb.Skipf("no %s (apt-get install etcd-server)", ExternalBinary)
	}
}

func (s *Server) startExternal(ports [2]int) {
	s.tb.Helper()
	if ports == [2]int{} {
		ports = freePorts(s.tb)
	}
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
	}
	cu := fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[0])
	pu := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	args := []string{
		"--name", "etcdtest", "--data-dir", s.dir + "/etcd",
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", "etcdtest=" + pu, "--log-level", "error",
		"--logger", "zap", "--max-txn-ops", "1024",
	}
	if s.tls != nil {
		args = append(args, "--cert-file", s.tls.ServerCert, "--key-file", s.tls.ServerKey,
			"--trusted-ca-file", s.tls.CA, "--client-cert-auth")
	}
	cmd := exec.Command(ExternalBinary, args...)
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH=")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("start %s: %v", ExternalBinary, err)
	}
	s.mu.Lock()
	s.cmd, s.ports, s.url = cmd, ports, cu
	s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0]), time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		if time.Now().After(deadline) {
			s.Stop()
			s.tb.Fatalf("external etcd did not listen within 30s: %s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Endpoint returns the client URL.
func (s *Server) Endpoint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Config returns a kvstore config that connects to the server.
func (s *Server) Config() kvstore.Config {
	cfg := kvstore.Config{Endpoints: []string{s.Endpoint()}, DialTimeout: 5 * time.Second}
	if s.tls != nil {
		cfg.CAFile, cfg.CertFile, cfg.KeyFile = s.tls.CA, s.tls.ClientCert, s.tls.ClientKey
	}
	return cfg
}

// Client returns a new client, closed when the test ends.
func (s *Server) Client(tb testing.TB) *kvstore.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kvstore.New(ctx, s.Config())
	if err != nil {
		tb.Fatalf("connect to etcdtest server: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Stop stops the server; its data stays for Restart. It is idempotent.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inproc != nil {
		s.inproc.Close()
		s.inproc = nil
	}
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Restart stops the server and starts it again on the same ports and data,
// the way an etcd restart looks to clients.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	s.Resume()
}

// Resume starts a stopped server again on its ports and data.
func (s *Server) Resume() {
	s.tb.Helper()
	s.mu.Lock()
	ports := s.ports
	s.mu.Unlock()
	if s.external {
		s.startExternal(ports)
		return
	}
	s.startEmbedded(ports)
}

// Ports returns the client and peer ports.
func (s *Server) Ports() [2]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ports
}

var clusterSeq atomic.Int64

// Cluster returns a cluster name unique in this test binary, so tests can
// share a server and stay apart by key prefix.
func Cluster(tb testing.TB) string {
	return fmt.Sprintf("t%d-%d", os.Getpid()%100000, clusterSeq.Add(1))
}

func freePorts(tb testing.TB) [2]int {
	tb.Helper()
	var p [2]int
	var ls []net.Listener
	for i := range p {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("pick port: %v", err)
		}
		ls = append(ls, l)
		p[i] = l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return p
}
