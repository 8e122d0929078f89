package embedded

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/meshplane/meshplane/kvstore"
)

// Server is an etcd server running inside this process on loopback.
type Server struct {
	etcd      *embed.Etcd
	lock      *fileutil.LockedFile // held while the server runs
	clientURL string
	ports     [2]int
}

// Start starts an etcd server with its data in dir/etcd. With ports
// zero, loopback ports are chosen; otherwise ports holds the client and peer
// ports to listen on (to restart a server where its clients expect it).
//
// The server holds a lock on dir/etcd.lock while it runs, so a second server
// on the same dir fails at once with an error wrapping kvstore.ErrConfig.
func Start(ctx context.Context, dir string, ports [2]int) (*Server, error) {
	dataDir := filepath.Join(dir, "etcd")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: state directory (--state-dir) %s: %w; pick a writable directory", kvstore.ErrConfig, dir, err)
	}
	// etcd opens its bbolt database with a blocking file lock and no
	// timeout: a second server on the same data dir would hang in
	// embed.StartEtcd forever, ignoring ctx. Take our own lock first.
	lock, err := fileutil.TryLockFile(filepath.Join(dir, "etcd.lock"), os.O_WRONLY|os.O_CREATE, 0o600)
	if errors.Is(err, fileutil.ErrLocked) {
		return nil, fmt.Errorf("%w: embedded etcd in %s: the data directory is in use by another process; stop it or pass --etcd-endpoints", kvstore.ErrConfig, dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: lock state directory (--state-dir) %s: %w", kvstore.ErrConfig, dir, err)
	}
	srv, err := startEmbeddedPorts(ctx, dataDir, ports)
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	srv.lock = lock
	return srv, nil
}

func startEmbeddedPorts(ctx context.Context, dataDir string, ports [2]int) (*Server, error) {
	if ports != [2]int{} {
		return startEmbeddedOnce(ctx, dataDir, ports)
	}
	var lastErr error
	// The ports are picked by binding and releasing them, so another process
	// can take one in between: try again with fresh ports.
	for range 5 {
		p, err := freePorts(2)
		if err != nil {
			return nil, fmt.Errorf("embedded etcd: pick ports: %w", err)
		}
		srv, err := startEmbeddedOnce(ctx, dataDir, [2]int{p[0], p[1]})
		if err == nil {
			return srv, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func startEmbeddedOnce(ctx context.Context, dataDir string, ports [2]int) (*Server, error) {
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	cfg := embed.NewConfig()
	cfg.Name = "meshplane"
	cfg.Dir = dataDir
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// A restart on the same data dir keeps the member but not the ports:
	// let the stored member's peer URL differ from this run's.
	cfg.StrictReconfigCheck = false
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.AutoCompactionMode = embed.CompactorModeRevision
	cfg.AutoCompactionRetention = "100000"
	cfg.QuotaBackendBytes = 8 << 30
	cfg.MaxTxnOps = 1024
	cfg.MaxRequestBytes = 8 << 20
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		if errors.Is(err, os.ErrExist) || strings.Contains(err.Error(), "resource temporarily unavailable") {
			return nil, fmt.Errorf("embedded etcd in %s: the data directory is in use by another process; stop it or pass --etcd-endpoints: %w", dataDir, err)
		}
		return nil, fmt.Errorf("embedded etcd in %s: %w", dataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", dataDir, err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: not ready after 60s", dataDir)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", dataDir, ctx.Err())
	}
	return &Server{etcd: e, clientURL: cu.String(), ports: ports}, nil
}

// ClientURL returns the URL clients connect to.
func (s *Server) ClientURL() string { return s.clientURL }

// Ports returns the client and peer ports, for a restart in the same place.
func (s *Server) Ports() [2]int { return s.ports }

// Config returns a kvstore configuration that connects to the server.
func (s *Server) Config() kvstore.Config {
	return kvstore.Config{Endpoints: []string{s.clientURL}}
}

// Close stops the server. Data stays in its directory.
func (s *Server) Close() {
	s.etcd.Close()
	if s.lock != nil {
		_ = s.lock.Close()
	}
}

// Connect starts a server with its data in dir/etcd and returns a client
// of it; closing the client stops the server. cfg's Endpoints must be
// empty (the server's URL is used); its timeouts apply. TLS and credentials
// are refused: the server listens on loopback without either.
func Connect(ctx context.Context, dir string, cfg kvstore.Config) (*kvstore.Client, error) {
	if len(cfg.Endpoints) > 0 {
		return nil, fmt.Errorf("%w: an embedded etcd and --etcd-endpoints were both asked for: keep one", kvstore.ErrConfig)
	}
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" || cfg.Username != "" || cfg.Password != "" || cfg.PasswordFile != "" {
		return nil, fmt.Errorf("%w: TLS files or credentials were given for an embedded etcd, which uses neither: name the external etcd with --etcd-endpoints or drop them", kvstore.ErrConfig)
	}
	if dir == "" {
		return nil, fmt.Errorf("%w: an embedded etcd needs a state directory (--state-dir)", kvstore.ErrConfig)
	}
	srv, err := Start(ctx, dir, [2]int{})
	if err != nil {
		return nil, err
	}
	cfg.Endpoints = []string{srv.clientURL}
	c, err := kvstore.New(ctx, cfg)
	if err != nil {
		srv.Close()
		return nil, err
	}
	c.OnClose(srv.Close)
	return c, nil
}

// freePorts returns n distinct loopback TCP ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
