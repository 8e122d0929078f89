package kvstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"syscall"
	"time"
)

// preflight connects to every endpoint once, in parallel, before the etcd
// client does. The client retries a failed connection until the dial
// timeout and then reports only that it timed out; preflight reports at
// once, and with what to do, what no retry fixes: nothing listening, a TLS
// handshake that fails (the server's certificate, the CA, the client
// certificate), and a scheme that does not match the server (http:// to an
// etcd that speaks TLS, https:// to one that does not). It returns nil as
// soon as one endpoint answers as etcd does (HTTP/2, over TLS for https://),
// and otherwise an error for each endpoint, joined.
func preflight(ctx context.Context, cfg Config, tlsCfg *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	errc := make(chan error, len(cfg.Endpoints))
	var wg sync.WaitGroup
	for _, ep := range cfg.Endpoints {
		wg.Go(func() { errc <- checkEndpoint(ctx, cfg, tlsCfg, ep) })
	}
	// The other checks end at once when cancel runs: wait for them.
	defer wg.Wait()
	var errs []error
	for range cfg.Endpoints {
		err := <-errc
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// http2Preface is what an HTTP/2 client sends first: the connection
// preface and an empty SETTINGS frame. etcd's gRPC server answers with a
// SETTINGS frame of its own.
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")

// answerWait bounds how long a check waits for the server's first frame
// after its own: a server that is up answers within a round trip.
const answerWait = 2 * time.Second

// checkEndpoint connects to one endpoint as the etcd client would and
// reports what is wrong, or nil.
func checkEndpoint(ctx context.Context, cfg Config, tlsCfg *tls.Config, ep string) error {
	u, err := url.Parse(ep)
	if err != nil {
		return fmt.Errorf("%w: endpoint %s is not a URL", ErrConfig, RedactEndpoint(ep))
	}
	network, addr := "tcp", u.Host
	if u.Scheme == "unix" || u.Scheme == "unixs" {
		network, addr = "unix", u.Host+u.Path
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return dialError(cfg, ep, err)
	}
	defer func() { _ = conn.Close() }()
	switch u.Scheme {
	case "https":
		return checkTLS(ctx, cfg, tlsCfg, u, conn)
	case "unixs":
		// The client's server name for a socket is its own affair: leave
		// the handshake to it.
		return nil
	}
	switch err := speaksHTTP2(ctx, conn); {
	case err == nil:
		return nil
	case speaksTLS(ctx, network, addr, u.Hostname()):
		return fmt.Errorf("%w: the etcd at %s speaks TLS: use https:// and --etcd-ca (the CA that signed its certificate)", ErrConfig, RedactEndpoint(ep))
	case errors.Is(err, errNotHTTP2):
		return fmt.Errorf("%w: %s answers, but not as etcd does (gRPC over HTTP/2): check that --etcd-endpoints names etcd's client URL", ErrUnavailable, RedactEndpoint(ep))
	default:
		// It accepted the connection and closed it, or stays silent:
		// the etcd client's own attempt tells more.
		return nil
	}
}

// errNotHTTP2 means a server answered with something else than an HTTP/2
// frame.
var errNotHTTP2 = errors.New("not an HTTP/2 server")

// speaksHTTP2 sends the HTTP/2 preface on conn and reads the first frame's
// header: nil if it is a SETTINGS frame.
func speaksHTTP2(ctx context.Context, conn net.Conn) error {
	setDeadline(ctx, conn)
	if _, err := conn.Write(http2Preface); err != nil {
		return err
	}
	var hdr [9]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		if len(bytes.TrimRight(hdr[:], "\x00")) > 0 {
			return errNotHTTP2
		}
		return err
	}
	if hdr[3] != 0x4 { // frame type SETTINGS
		return errNotHTTP2
	}
	return nil
}

// plainHTTP2 reports whether the server at the TCP address addr answers
// HTTP/2 without TLS.
func plainHTTP2(ctx context.Context, addr string) bool {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer func() { _ = conn.Close() }()
	return speaksHTTP2(ctx, conn) == nil
}

// speaksTLS reports whether the server at addr answers a TLS handshake:
// it completes one (its certificate unchecked), or refuses it with a TLS
// alert, which only a TLS server sends.
func speaksTLS(ctx context.Context, network, addr, host string) bool {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return false
	}
	defer func() { _ = conn.Close() }()
	setDeadline(ctx, conn)
	// Only to learn whether the server speaks TLS: nothing is sent over
	// this connection, so its certificate need not be verified.
	tc := tls.Client(conn, &tls.Config{ServerName: host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // see above
	err = tc.HandshakeContext(ctx)
	return err == nil || isRemoteAlert(err)
}

// checkTLS shakes hands with an https:// endpoint as the etcd client would,
// then waits for the server's first frame: under TLS 1.3 a server rejects a
// client certificate only after the client's side of the handshake is
// done, with an alert that the first read returns.
func checkTLS(ctx context.Context, cfg Config, tlsCfg *tls.Config, u *url.URL, conn net.Conn) error {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if tlsCfg != nil {
		c = tlsCfg.Clone()
	}
	if c.ServerName == "" {
		c.ServerName = u.Hostname()
	}
	c.NextProtos = []string{"h2"}
	tc := tls.Client(conn, c)
	setDeadline(ctx, tc)
	if err := tc.HandshakeContext(ctx); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			// A plain etcd closes the connection on a TLS hello: ask it
			// in HTTP/2.
			if plainHTTP2(ctx, u.Host) {
				return notTLSError(u)
			}
		}
		return tlsError(cfg, c, u, err)
	}
	if err := speaksHTTP2(ctx, tc); isRemoteAlert(err) {
		return tlsError(cfg, c, u, err)
	}
	return nil
}

// setDeadline bounds conn's reads and writes by ctx's deadline and
// answerWait.
func setDeadline(ctx context.Context, conn net.Conn) {
	d := time.Now().Add(answerWait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(d) {
		d = dl
	}
	_ = conn.SetDeadline(d)
}

// isRemoteAlert reports whether err is a TLS alert the server sent. The
// alert's own type is unexported in crypto/tls (tls.AlertError is only for
// QUIC), so the *net.OpError it comes in, with Op "remote error", is what
// tells it; which alert it was is only in the message.
func isRemoteAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

// notTLSError says that the https:// endpoint u answers without TLS.
func notTLSError(u *url.URL) error {
	return fmt.Errorf("%w: the etcd at %s does not speak TLS: use http://%s, or give etcd a certificate", ErrConfig, RedactEndpoint(u.String()), u.Host)
}

// tlsError says what a failed TLS handshake means.
func tlsError(cfg Config, c *tls.Config, u *url.URL, err error) error {
	ep := RedactEndpoint(u.String())
	var (
		header    tls.RecordHeaderError
		authority x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &header):
		return notTLSError(u)
	case errors.As(err, &authority) && cfg.CAFile == "":
		return fmt.Errorf("%w: the certificate of the etcd at %s is not signed by a CA this machine trusts: pass the CA that signed it with --etcd-ca (%w)", ErrAuth, ep, err)
	case errors.As(err, &authority):
		return fmt.Errorf("%w: the certificate of the etcd at %s is not signed by a CA in --etcd-ca (%s): pass the CA that signed it (%w)", ErrAuth, ep, cfg.CAFile, err)
	case errors.As(err, &hostname):
		return fmt.Errorf("%w: the certificate of the etcd at %s is not valid for %s: connect by a name or address it holds, or reissue it (%w)", ErrAuth, ep, hostname.Host, err)
	case errors.As(err, &invalid):
		return fmt.Errorf("%w: the certificate of the etcd at %s cannot be used: %w", ErrAuth, ep, err)
	case isRemoteAlert(err) && len(c.Certificates) == 0:
		return fmt.Errorf("%w: the etcd at %s requires a client certificate: pass --etcd-cert and --etcd-key (%w)", ErrAuth, ep, err)
	case isRemoteAlert(err):
		return fmt.Errorf("%w: the etcd at %s rejected the client certificate %s: it must be signed by a CA etcd trusts (its --trusted-ca-file) and allow client authentication (%w)",
			ErrAuth, ep, cfg.CertFile, err)
	}
	return fmt.Errorf("%w: TLS handshake with %s failed; check --etcd-ca, --etcd-cert and --etcd-key: %w", ErrAuth, ep, err)
}

// dialError says what a failed connection means.
func dialError(cfg Config, ep string, err error) error {
	ep = RedactEndpoint(ep)
	var dns *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: nothing accepts connections at %s (connection refused): check that etcd runs there and that --etcd-endpoints names its client URL", ErrUnavailable, ep)
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: no socket at %s: check that etcd runs and that --etcd-endpoints names its socket", ErrUnavailable, ep)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return fmt.Errorf("%w: no route to %s: check the address in --etcd-endpoints and the network: %w", ErrUnavailable, ep, err)
	case errors.As(err, &dns):
		return fmt.Errorf("%w: cannot resolve the host of %s: check --etcd-endpoints and DNS: %w", ErrUnavailable, ep, err)
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return fmt.Errorf("%w: no answer from %s within %s; check that etcd runs and the endpoints are right: %w", ErrUnavailable, ep, cfg.DialTimeout, err)
	}
	return fmt.Errorf("%w: connect to %s: %w", ErrUnavailable, ep, err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
