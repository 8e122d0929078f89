package kubeapiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Server is a running kube-apiserver, a child of this process.
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
	client   *Client
	bin      string   // the binary and arguments of the process,
	args     []string // for Restart
	down     bool     // Kill stopped it; Restart starts it again
	users    []User
	stopOnce sync.Once
}

// readyTimeout bounds Start's wait for /readyz.
const readyTimeout = 3 * time.Minute

// Start prepares a kube-apiserver (Prepare), runs it as a child that gets
// SIGKILL when this process dies, and waits until it is ready (up to 3
// minutes). If another process took the port first, it prepares again on
// a fresh one. The caller calls Stop, and removes cfg.Dir.
func Start(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	bin := cfg.Binary
	if bin == "" {
		var err error
		if bin, err = Find(); err != nil {
			return nil, err
		}
	}
	for attempt := 0; ; attempt++ {
		setup, err := Prepare(cfg)
		if err != nil {
			return nil, err
		}
		// Retries keep the etcd prefix of the first attempt.
		cfg.EtcdPrefix = setup.EtcdPrefix
		s, err := start(bin, setup)
		if err != nil {
			if attempt < 2 && strings.Contains(s.logTail(), "address already in use") {
				continue
			}
			return nil, fmt.Errorf("kubeapiserver: %w", err)
		}
		return s, nil
	}
}

// start runs setup's process and waits until /readyz answers ok. On error
// the process is gone, and s is still good for logTail.
func start(bin string, setup Setup) (*Server, error) {
	s := &Server{
		Host: setup.Host, CAPEM: setup.CAPEM, CAFile: setup.CAFile, AdminToken: setup.AdminToken,
		Kubeconfig: setup.Kubeconfig, EtcdPrefix: setup.EtcdPrefix,
		dir: setup.Dir, logFile: filepath.Join(setup.Dir, "kube-apiserver.log"),
		users: setup.Users, bin: bin, args: setup.Args,
	}
	client, err := NewClient(setup)
	if err != nil {
		return s, err
	}
	s.client = client
	if err := s.run(); err != nil {
		client.Close()
		return s, err
	}
	return s, nil
}

// run starts the process with s's binary and arguments and waits until
// /readyz answers ok; on error the process is gone.
func (s *Server) run() error {
	log, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer func() { _ = log.Close() }()
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout, cmd.Stderr = log, log
	// Dies with the process that started it, even when that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	gone := func() bool {
		select {
		case <-exited:
			return true
		default:
			return false
		}
	}
	if err := s.client.WaitReady(ctx, gone); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("%w (%v); its log:\n%s", err, cmd.ProcessState, s.logTail())
	}
	return nil
}

// Kill stops the apiserver process (SIGKILL, by PID), as an outage would,
// and keeps everything else: Restart starts it again on the same port,
// etcd prefix and credentials. Stop still has to be called.
func (s *Server) Kill() {
	if s.cmd != nil && !s.down {
		_ = s.cmd.Process.Kill()
		<-s.exited
		s.down = true
	}
}

// Restart starts the apiserver that Kill stopped again, with the same
// arguments (so kubeconfigs stay valid), and waits until it is ready.
func (s *Server) Restart() error {
	if !s.down {
		return errors.New("kubeapiserver: Restart of a running apiserver: Kill it first")
	}
	s.down = false
	if err := s.run(); err != nil {
		return fmt.Errorf("kubeapiserver: %w", err)
	}
	return nil
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
			s.client.Close()
		}
	})
}

// PID is the apiserver process's ID.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Client returns the admin's client of the apiserver. Stop closes it.
func (s *Server) Client() *Client { return s.client }

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
	p := filepath.Join(s.dir, file+".kubeconfig")
	if err := writeKubeconfig(p, s.Host, s.CAPEM, user, token); err != nil {
		return "", err
	}
	return p, nil
}

// Create POSTs obj (marshaled to JSON) to path as the admin. An answer
// other than 2xx is a *StatusError.
func (s *Server) Create(ctx context.Context, path string, obj any) error {
	return s.client.Do(ctx, http.MethodPost, path, "application/json", obj, nil)
}

// Request sends method path to the apiserver as the user of token, with
// obj marshaled to JSON as the body (none if obj is nil), and returns the
// response's status code and body. A status that is not 2xx is not an
// error: the caller judges the code.
func (s *Server) Request(ctx context.Context, token, method, path string, obj any) (int, []byte, error) {
	return s.client.send(ctx, token, method, path, "application/json", obj, false)
}
