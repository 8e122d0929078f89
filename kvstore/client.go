package kvstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ErrUnavailable is wrapped when etcd cannot be reached or does not answer.
var ErrUnavailable = errors.New("etcd unavailable")

// ErrAuth is wrapped when etcd rejects the credentials or the certificate.
var ErrAuth = errors.New("etcd rejected the credentials")

// Client is a connection to etcd. It is safe for concurrent use.
type Client struct {
	cfg  Config
	etcd *clientv3.Client

	mu      sync.Mutex // mu guards onClose
	onClose []func()

	closeOnce sync.Once
	closeErr  error
}

// New connects to the etcd that cfg describes and proves that it answers
// within cfg.DialTimeout. A config without endpoints is an ErrConfig
// error: New never starts an etcd (see package kvstore/embedded).
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	c := &Client{cfg: cfg}
	tlsCfg, err := loadTLS(cfg)
	if err != nil {
		return nil, err
	}
	password, err := loadPassword(cfg)
	if err != nil {
		return nil, err
	}
	if err := preflight(ctx, cfg, tlsCfg); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	ecfg := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    cfg.DialTimeout,
		DialKeepAliveTimeout: cfg.DialTimeout,
		TLS:                  tlsCfg,
		Username:             cfg.Username,
		Password:             password,
		Logger:               zap.NewNop(),
		Context:              context.WithoutCancel(ctx),
		// Large identity and ipcache prefixes are read in pages, but a
		// single page of big values must still fit.
		MaxCallRecvMsgSize: 64 << 20,
	}
	cli, err := clientv3.New(ecfg)
	if err != nil {
		return nil, classify(cfg, "connect", err)
	}
	c.etcd = cli
	if err := c.probe(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// probe asks every endpoint for its status until one answers. Without a
// user it then reads a key, as etcdctl endpoint health does: etcd answers
// a status request without credentials even when its auth is on, and
// refuses the first read.
func (c *Client) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	var last error
	for _, ep := range c.etcd.Endpoints() {
		_, err := c.etcd.Status(ctx, ep)
		if err == nil {
			last = nil
			break
		}
		last = err
	}
	if last == nil && c.cfg.Username == "" {
		_, last = c.etcd.Get(ctx, "health", clientv3.WithCountOnly())
	}
	return classify(c.cfg, "probe", last)
}

// classify turns an etcd client error into one that says what to check.
func classify(cfg Config, op string, err error) error {
	switch {
	case err == nil:
		return nil
	case isUserEmpty(err):
		return fmt.Errorf("%s %s: %w: %s", op, cfg, ErrAuth, needsUser)
	case errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrGRPCAuthFailed),
		errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrGRPCPermissionDenied),
		errors.Is(err, rpctypes.ErrInvalidAuthToken), errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken):
		return fmt.Errorf("%s %s: %w: check --etcd-user and the password (env MESHPLANE_ETCD_PASSWORD or --etcd-password-file): %w", op, cfg, ErrAuth, err)
	// preflight reports TLS failures with their types; one that shows
	// only later reaches us as a gRPC status, which keeps nothing of the
	// TLS error but its text: matching text is unavoidable here.
	case strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "tls:"):
		return fmt.Errorf("%s %s: %w: TLS handshake failed; check --etcd-ca, --etcd-cert and --etcd-key: %w", op, cfg, ErrAuth, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fmt.Errorf("%s %s: %w: no answer within %s; check that etcd runs and the endpoints are right: %w",
			op, cfg, ErrUnavailable, cfg.DialTimeout, err)
	}
	return fmt.Errorf("%s %s: %w: %w", op, cfg, ErrUnavailable, err)
}

// needsUser is what to do when etcd refuses a client without a user.
const needsUser = "etcd requires authentication: pass --etcd-user and a password (env MESHPLANE_ETCD_PASSWORD or --etcd-password-file)"

// isUserEmpty reports whether etcd refused a request for want of a user:
// its auth is on and the client has no credentials.
func isUserEmpty(err error) bool {
	return errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrGRPCUserEmpty) ||
		errors.Is(rpctypes.Error(err), rpctypes.ErrUserEmpty)
}

// loadPassword returns the password: Password, or the first line of
// PasswordFile.
func loadPassword(cfg Config) (string, error) {
	if cfg.PasswordFile == "" {
		return cfg.Password, nil
	}
	b, err := os.ReadFile(cfg.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("%w: read etcd password file: %w", ErrConfig, err)
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("%w: etcd password file %s is empty: write the password on its first line", ErrConfig, cfg.PasswordFile)
	}
	return pw, nil
}

func loadTLS(cfg Config) (*tls.Config, error) {
	secure := cfg.CAFile != "" || cfg.CertFile != ""
	for _, ep := range cfg.Endpoints {
		secure = secure || strings.HasPrefix(ep, "https://") || strings.HasPrefix(ep, "unixs://")
	}
	if !secure {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: read etcd CA file: %w", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: etcd CA file %s holds no PEM certificate", ErrConfig, cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: load etcd client certificate %s and key %s: %w", ErrConfig, cfg.CertFile, cfg.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Etcd returns the underlying etcd client, for kvstore's own subpackages
// (allocators) that build transactions. Other packages use the typed API.
func (c *Client) Etcd() *clientv3.Client { return c.etcd }

// Config returns the configuration the client was made with, defaults filled in.
func (c *Client) Config() Config { return c.cfg }

// Endpoints returns the client URLs in use.
func (c *Client) Endpoints() []string { return c.etcd.Endpoints() }

// OnClose arranges for f to run once Close has closed the connection, after
// the functions registered before it. kvstore/embedded uses it to stop the
// server it started for the client. f must not call Close.
func (c *Client) OnClose(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onClose = append(c.onClose, f)
}

// Close closes the connection, then runs the OnClose functions. It is
// idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		if c.etcd != nil {
			c.closeErr = c.etcd.Close()
		}
		c.mu.Lock()
		fs := c.onClose
		c.onClose = nil
		c.mu.Unlock()
		for _, f := range fs {
			f()
		}
	})
	return c.closeErr
}
