package kvstore_test

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// newAtOnce runs kvstore.New with a dial timeout far longer than the test
// waits for it: a failure that must be reported as soon as it is known
// fails the test instead of arriving when the dial timeout ends.
func newAtOnce(t *testing.T, cfg kvstore.Config) error {
	t.Helper()
	cfg.DialTimeout = 10 * time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		c, err := kvstore.New(ctx, cfg)
		if err == nil {
			_ = c.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("New(%s) connected", cfg)
		}
		return err
	case <-time.After(time.Minute):
		// New may not return before its dial timeout: leave it.
		t.Fatalf("New(%s) still waiting after a minute (dial timeout %s): the failure is not reported at once", cfg, cfg.DialTimeout)
		return nil
	}
}

const secret = "s3cret-pw"

// TestCredentialsNeverEchoed: a password in a flag or in an endpoint URL
// never appears in an error or in the config's description.
func TestCredentialsNeverEchoed(t *testing.T) {
	closed := closedEndpoint(t)
	u, _ := url.Parse(closed)
	withUser := "http://agent:" + secret + "@" + u.Host
	tests := []struct {
		name string
		cfg  kvstore.Config
		want error
		msg  string
	}{
		{"password in the URL", kvstore.Config{Endpoints: []string{withUser}}, kvstore.ErrConfig, "http://agent:xxxxx@" + u.Host + " carries credentials"},
		{"password in an https URL", kvstore.Config{Endpoints: []string{"https://agent:" + secret + "@10.0.0.1:2379"}}, kvstore.ErrConfig, "--etcd-password-file"},
		{"password in a URL that does not parse", kvstore.Config{Endpoints: []string{"http://agent:" + secret + "@[::1"}}, kvstore.ErrConfig, "not a URL"},
		{"password in a URL with another scheme", kvstore.Config{Endpoints: []string{"ftp://agent:" + secret + "@h:1"}}, kvstore.ErrConfig, "scheme"},
		{"password flag", kvstore.Config{Endpoints: []string{closed}, Username: "agent", Password: secret}, kvstore.ErrUnavailable, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s := tt.cfg.String(); strings.Contains(s, secret) {
				t.Errorf("String() = %q shows the password", s)
			}
			err := newAtOnce(t, tt.cfg)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("New() = %v, want %v saying %q", err, tt.want, tt.msg)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("New() = %v shows the password", err)
			}
		})
	}
}

// TestNewRefusedAtOnce: an endpoint where nothing listens is reported at
// once, not after the dial timeout.
func TestNewRefusedAtOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, endpoint, msg string
	}{
		{"tcp", closedEndpoint(t), "connection refused"},
		{"unix", "unix://" + filepath.Join(t.TempDir(), "etcd.sock"), "no socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := newAtOnce(t, kvstore.Config{Endpoints: []string{tt.endpoint}})
			if !errors.Is(err, kvstore.ErrUnavailable) || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), "--etcd-endpoints") {
				t.Fatalf("New() = %v, want ErrUnavailable saying %q", err, tt.msg)
			}
		})
	}
}

// TestHTTPSToPlainEtcd: https:// against an etcd without TLS says so.
func TestHTTPSToPlainEtcd(t *testing.T) {
	t.Parallel()
	ep := strings.Replace(shared.ClientURL(), "http://", "https://", 1)
	err := newAtOnce(t, kvstore.Config{Endpoints: []string{ep}})
	if !errors.Is(err, kvstore.ErrConfig) || !strings.Contains(err.Error(), "does not speak TLS: use http://") {
		t.Fatalf("New() = %v, want ErrConfig saying the etcd does not speak TLS", err)
	}
}

// TestExternalTLSFailsAtOnce: against Debian's etcd with TLS and client
// certificates, each TLS failure is reported as soon as the handshake
// fails, saying what is wrong; http:// against it says it speaks TLS.
func TestExternalTLSFailsAtOnce(t *testing.T) {
	srv := etcdtest.StartExternalTLS(t)
	good := srv.Config()
	other := etcdtest.NewTLSFiles(t, t.TempDir())
	tests := []struct {
		name string
		mod  func(*kvstore.Config)
		want error
		msg  string
	}{
		{"wrong CA", func(c *kvstore.Config) { c.CAFile = other.CA }, kvstore.ErrAuth, "is not signed by a CA in --etcd-ca"},
		{"no CA", func(c *kvstore.Config) { c.CAFile = "" }, kvstore.ErrAuth, "pass the CA that signed it with --etcd-ca"},
		{"client certificate from another CA", func(c *kvstore.Config) { c.CertFile, c.KeyFile = other.ClientCert, other.ClientKey }, kvstore.ErrAuth, "rejected the client certificate"},
		{"no client certificate", func(c *kvstore.Config) { c.CertFile, c.KeyFile = "", "" }, kvstore.ErrAuth, "requires a client certificate: pass --etcd-cert and --etcd-key"},
		{"http to a TLS etcd", func(c *kvstore.Config) {
			c.Endpoints = []string{strings.Replace(c.Endpoints[0], "https://", "http://", 1)}
		}, kvstore.ErrConfig, "speaks TLS: use https:// and --etcd-ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mod(&cfg)
			err := newAtOnce(t, cfg)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("New() = %v, want %v saying %q", err, tt.want, tt.msg)
			}
		})
	}
}
