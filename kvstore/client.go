package kvstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ErrUnavailable is wrapped when etcd cannot be reached or does not answer.
var ErrUnavailable = errors.New("etcd unavailable")

// ErrAuth is wrapped when etcd rejects the credentials or the certificate.
var ErrAuth = errors.New("etcd rejected the credentials")

// Client is a connection to etcd, external or embedded. It is safe for
// concurrent use. Close releases the connection and stops the embedded
// server, if any.
type Client struct {
	cfg      Config
	etcd     *clientv3.Client
	embedded *EmbeddedServer
	tls      *tls.Config

	closeOnce sync.Once
	closeErr  error
}

// New connects to the etcd that cfg describes, or starts the embedded one,
// and proves that it answers within cfg.DialTimeout.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	c := &Client{cfg: cfg}
	endpoints := cfg.Endpoints
	if cfg.Embedded() {
		srv, err := StartEmbedded(ctx, cfg.StateDir, [2]int{})
		if err != nil {
			return nil, err
		}
		c.embedded = srv
		endpoints = []string{srv.clientURL}
	}
	tlsCfg, err := loadTLS(cfg)
	if err != nil {
		c.closeEmbedded()
		return nil, err
	}
	ecfg := clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    cfg.DialTimeout,
		DialKeepAliveTimeout: cfg.DialTimeout,
		TLS:                  tlsCfg,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               zap.NewNop(),
		Context:              context.WithoutCancel(ctx),
		// Large identity and ipcache prefixes are read in pages, but a
		// single page of big values must still fit.
		MaxCallRecvMsgSize: 64 << 20,
	}
	cli, err := clientv3.New(ecfg)
	if err != nil {
		c.closeEmbedded()
		return nil, classify(cfg, "connect", err)
	}
	c.etcd = cli
	c.tls = tlsCfg
	if err := c.probe(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// probe asks every endpoint for its status until one answers.
func (c *Client) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	var last error
	for _, ep := range c.etcd.Endpoints() {
		_, err := c.etcd.Status(ctx, ep)
		if err == nil {
			return nil
		}
		last = err
	}
	// gRPC hides a failed TLS handshake behind retries until the deadline:
	// shake hands once ourselves so the error can say what was wrong.
	if c.tls != nil {
		for _, ep := range c.cfg.Endpoints {
			if herr := handshake(ep, c.tls, c.cfg.DialTimeout); herr != nil {
				return fmt.Errorf("probe %s: %w: TLS handshake with %s failed; check --etcd-ca, --etcd-cert and --etcd-key: %w",
					c.cfg, ErrAuth, ep, herr)
			}
		}
	}
	return classify(c.cfg, "probe", last)
}

// handshake dials a TLS endpoint and reports a handshake failure, including
// one the server reports only after the client's side is done (TLS 1.3
// rejects client certificates that way). Other failures return nil.
func handshake(endpoint string, base *tls.Config, timeout time.Duration) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "https" {
		return nil
	}
	cfg := base.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	cfg.NextProtos = []string{"h2"}
	d := &net.Dialer{Timeout: timeout}
	conn, err := tls.DialWithDialer(d, "tcp", u.Host, cfg)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			return nil // not a TLS problem
		}
		return err
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		if strings.Contains(err.Error(), "tls:") {
			return err
		}
	}
	return nil
}

// classify turns an etcd client error into one that says what to check.
func classify(cfg Config, op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrGRPCAuthFailed),
		errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrGRPCPermissionDenied),
		errors.Is(err, rpctypes.ErrInvalidAuthToken), errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken):
		return fmt.Errorf("%s %s: %w: check --etcd-user and --etcd-password: %w", op, cfg, ErrAuth, err)
	case strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "tls:"):
		return fmt.Errorf("%s %s: %w: TLS handshake failed; check --etcd-ca, --etcd-cert and --etcd-key: %w", op, cfg, ErrAuth, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fmt.Errorf("%s %s: %w: no answer within %s; check that etcd runs and the endpoints are right: %w",
			op, cfg, ErrUnavailable, cfg.DialTimeout, err)
	}
	return fmt.Errorf("%s %s: %w: %w", op, cfg, ErrUnavailable, err)
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

// Endpoints returns the client URLs in use (the embedded server's, if any).
func (c *Client) Endpoints() []string { return c.etcd.Endpoints() }

// Close closes the connection and stops the embedded etcd. It is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		if c.etcd != nil {
			c.closeErr = c.etcd.Close()
		}
		c.closeEmbedded()
	})
	return c.closeErr
}

func (c *Client) closeEmbedded() {
	if c.embedded != nil {
		c.embedded.Close()
	}
}
