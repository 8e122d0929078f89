package kvstore_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// TestExternalTLS runs against Debian's etcd with TLS and client
// certificates: the right files connect; a wrong CA, a missing client
// certificate or a missing file each give a clear error.
func TestExternalTLS(t *testing.T) {
	srv := etcdtest.StartExternalTLS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	good := srv.Config()
	c, err := kvstore.New(ctx, good)
	if err != nil {
		t.Fatalf("connect with the right TLS files: %v", err)
	}
	if _, err := c.Create(ctx, "/tls-test/key", []byte("v")); err != nil {
		t.Fatalf("write over TLS: %v", err)
	}
	_ = c.Close()

	other := etcdtest.NewTLSFiles(t, t.TempDir())
	tests := []struct {
		name string
		mod  func(*kvstore.Config)
		want error
	}{
		{"wrong CA", func(c *kvstore.Config) { c.CAFile = other.CA }, kvstore.ErrAuth},
		{"client certificate from another CA", func(c *kvstore.Config) { c.CertFile, c.KeyFile = other.ClientCert, other.ClientKey }, kvstore.ErrAuth},
		{"no client certificate", func(c *kvstore.Config) { c.CertFile, c.KeyFile = "", "" }, kvstore.ErrAuth},
		{"missing CA file", func(c *kvstore.Config) { c.CAFile = filepath.Join(t.TempDir(), "nope.pem") }, kvstore.ErrConfig},
		{"key that does not match", func(c *kvstore.Config) { c.KeyFile = other.ClientKey }, kvstore.ErrConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			cfg.DialTimeout = 2 * time.Second
			tt.mod(&cfg)
			c, err := kvstore.New(ctx, cfg)
			if err == nil {
				_ = c.Close()
				t.Fatal("connected")
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			t.Logf("%s: %v", tt.name, err)
		})
	}
}
