package kvstore_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  kvstore.Config
		ok   bool
	}{
		{"zero value has no endpoints", kvstore.Config{}, false},
		{"no endpoints with a dial timeout", kvstore.Config{DialTimeout: time.Second}, false},
		{"http endpoint", kvstore.Config{Endpoints: []string{"http://127.0.0.1:2379"}}, true},
		{"https endpoints with TLS and auth", kvstore.Config{
			Endpoints: []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"},
			CAFile:    "ca.pem", CertFile: "cert.pem", KeyFile: "key.pem",
			Username: "agent", Password: "secret",
		}, true},
		{"unix endpoint", kvstore.Config{Endpoints: []string{"unix:///run/etcd.sock"}}, true},
		{"unixs endpoint", kvstore.Config{Endpoints: []string{"unixs:///run/etcd.sock"}}, true},
		{"user without password", kvstore.Config{Endpoints: []string{"http://e:2379"}, Username: "agent"}, true},
		{"host:port is not a URL", kvstore.Config{Endpoints: []string{"127.0.0.1:2379"}}, false},
		{"bare host has no scheme", kvstore.Config{Endpoints: []string{"localhost"}}, false},
		{"ftp scheme", kvstore.Config{Endpoints: []string{"ftp://127.0.0.1:2379"}}, false},
		{"empty endpoint", kvstore.Config{Endpoints: []string{""}}, false},
		{"one bad endpoint among good", kvstore.Config{Endpoints: []string{"http://a:2379", "b:2379"}}, false},
		{"cert without key", kvstore.Config{Endpoints: []string{"https://e:2379"}, CertFile: "cert.pem"}, false},
		{"key without cert", kvstore.Config{Endpoints: []string{"https://e:2379"}, KeyFile: "key.pem"}, false},
		{"password without user", kvstore.Config{Endpoints: []string{"http://e:2379"}, Password: "secret"}, false},
		{"negative dial timeout", kvstore.Config{DialTimeout: -time.Second}, false},
		{"negative request timeout", kvstore.Config{Endpoints: []string{"http://e:2379"}, RequestTimeout: -1}, false},
		{"no endpoints with CA", kvstore.Config{CAFile: "ca.pem"}, false},
		{"no endpoints with client cert", kvstore.Config{CertFile: "cert.pem", KeyFile: "key.pem"}, false},
		{"no endpoints with user", kvstore.Config{Username: "agent", Password: "secret"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.ok && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case !tt.ok && !errors.Is(err, kvstore.ErrConfig):
				t.Fatalf("Validate() = %v, want an error wrapping ErrConfig", err)
			}
		})
	}
}

func TestConfigString(t *testing.T) {
	tests := []struct {
		cfg  kvstore.Config
		want string
	}{
		{kvstore.Config{}, "etcd (no endpoints)"},
		{kvstore.Config{Endpoints: []string{"http://a:1", "http://b:2"}}, "etcd at http://a:1,http://b:2"},
	}
	for _, tt := range tests {
		if got := tt.cfg.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.cfg, got, tt.want)
		}
	}
}

// closedEndpoint returns an http:// URL of a loopback port nobody listens on.
func closedEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "http://" + l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return ep
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("this is not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	closed := closedEndpoint(t)
	tests := []struct {
		name string
		cfg  kvstore.Config
		want error
	}{
		{"unreachable endpoint", kvstore.Config{Endpoints: []string{closed}, DialTimeout: time.Second}, kvstore.ErrUnavailable},
		{"unreachable endpoint with credentials", kvstore.Config{
			Endpoints: []string{closed}, DialTimeout: time.Second, Username: "agent", Password: "secret",
		}, kvstore.ErrUnavailable},
		{"CA file missing", kvstore.Config{
			Endpoints: []string{closed}, DialTimeout: time.Second, CAFile: filepath.Join(dir, "missing.pem"),
		}, kvstore.ErrConfig},
		{"CA file not PEM", kvstore.Config{
			Endpoints: []string{closed}, DialTimeout: time.Second, CAFile: notPEM,
		}, kvstore.ErrConfig},
		{"cert without key", kvstore.Config{
			Endpoints: []string{closed}, DialTimeout: time.Second, CertFile: notPEM,
		}, kvstore.ErrConfig},
		{"cert and key not loadable", kvstore.Config{
			Endpoints: []string{closed}, DialTimeout: time.Second, CertFile: notPEM, KeyFile: filepath.Join(dir, "missing.key"),
		}, kvstore.ErrConfig},
		{"invalid endpoint", kvstore.Config{Endpoints: []string{"127.0.0.1:2379"}}, kvstore.ErrConfig},
		{"no endpoints", kvstore.Config{}, kvstore.ErrConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := kvstore.New(testContext(t), tt.cfg)
			if err == nil {
				_ = c.Close()
				t.Fatalf("New() succeeded, want an error wrapping %v", tt.want)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("New() = %v, want an error wrapping %v", err, tt.want)
			}
		})
	}
}

func TestNewConnects(t *testing.T) {
	c := newClient(t)
	if got, want := c.Endpoints(), []string{shared.ClientURL()}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("Endpoints() = %v, want %v", got, want)
	}
	cfg := c.Config()
	if cfg.DialTimeout != 5*time.Second || cfg.RequestTimeout != kvstore.DefaultRequestTimeout {
		t.Errorf("Config() timeouts = %s, %s; want the given dial timeout and the default request timeout",
			cfg.DialTimeout, cfg.RequestTimeout)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close() = %v, want nil", err)
	}
}

func TestNewCredentials(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	admin := srv.Client(t)
	ctx := testContext(t)
	const agentPrefix = "/meshplane/v1/auth/"
	e := admin.Etcd()
	steps := []struct {
		name string
		do   func() error
	}{
		{"add role root", func() error { _, err := e.RoleAdd(ctx, "root"); return err }},
		{"add user root", func() error { _, err := e.UserAdd(ctx, "root", "root-password"); return err }},
		{"grant root", func() error { _, err := e.UserGrantRole(ctx, "root", "root"); return err }},
		{"add role agent", func() error { _, err := e.RoleAdd(ctx, "agent"); return err }},
		{"permit agent", func() error {
			_, err := e.RoleGrantPermission(ctx, "agent", agentPrefix, clientv3.GetPrefixRangeEnd(agentPrefix),
				clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"add user agent", func() error { _, err := e.UserAdd(ctx, "agent", "agent-password"); return err }},
		{"grant agent", func() error { _, err := e.UserGrantRole(ctx, "agent", "agent"); return err }},
		{"enable auth", func() error { _, err := e.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}

	tests := []struct {
		name, user, password string
		want                 error
		msg                  string
	}{
		{"wrong password", "agent", "guess", kvstore.ErrAuth, "check --etcd-user and the password"},
		// etcd's own answer is "user name is empty".
		{"no user", "", "", kvstore.ErrAuth, "requires authentication: pass --etcd-user and a password (env MESHPLANE_ETCD_PASSWORD or --etcd-password-file)"},
		{"right password", "agent", "agent-password", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := srv.Config()
			cfg.Username, cfg.Password = tt.user, tt.password
			c, err := kvstore.New(testContext(t), cfg)
			if tt.want != nil {
				if err == nil {
					_ = c.Close()
					t.Fatalf("New() succeeded, want an error wrapping %v", tt.want)
				}
				if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("New() = %v, want an error wrapping %v saying %q", err, tt.want, tt.msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("New() = %v", err)
			}
			defer c.Close()
			key := agentPrefix + "k"
			if _, err := c.Create(ctx, key, []byte("v")); err != nil {
				t.Fatalf("Create() as agent = %v", err)
			}
			if kv, ok, err := c.Get(ctx, key); err != nil || !ok || string(kv.Value) != "v" {
				t.Fatalf("Get() as agent = %+v, %v, %v; want v", kv, ok, err)
			}
			// The role stops at its prefix.
			if err := c.Put(ctx, "/elsewhere", []byte("v")); err == nil {
				t.Fatalf("Put() outside the agent's prefix succeeded")
			}
		})
	}
}
