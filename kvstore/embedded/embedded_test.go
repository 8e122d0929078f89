package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/embedded"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEmbeddedRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := testContext(t)
	const key = "/meshplane/v1/embedded/k"
	var urls []string
	for i := range 3 {
		c, err := embedded.Connect(ctx, dir, kvstore.Config{})
		if err != nil {
			t.Fatalf("New() #%d on %s: %v", i+1, dir, err)
		}
		urls = append(urls, c.Endpoints()[0])
		if i > 0 {
			kv, ok, err := c.Get(ctx, key)
			if err != nil || !ok || string(kv.Value) != fmt.Sprint(i) {
				_ = c.Close()
				t.Fatalf("Get() after restart #%d = %q, %v, %v; want %q", i, kv.Value, ok, err, fmt.Sprint(i))
			}
		}
		if err := c.Put(ctx, key, []byte(fmt.Sprint(i+1))); err != nil {
			_ = c.Close()
			t.Fatalf("Put() #%d: %v", i+1, err)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close() #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "etcd", "member")); err != nil {
		t.Errorf("embedded etcd data is not in dir/etcd: %v", err)
	}
	t.Logf("embedded etcd ran at %v", urls)
}

func TestEmbeddedDataDirInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := testContext(t)
	c, err := embedded.Connect(ctx, dir, kvstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// etcd itself would block on its database's file lock forever.
	c2, err := embedded.Connect(ctx, dir, kvstore.Config{})
	if err == nil {
		_ = c2.Close()
		t.Fatal("a second embedded etcd on the same dir started")
	}
	if !errors.Is(err, kvstore.ErrConfig) {
		t.Fatalf("New() on a state dir in use = %v, want an error wrapping ErrConfig", err)
	}
	// The first server still answers.
	if err := c.Put(ctx, "/meshplane/v1/inuse", []byte("v")); err != nil {
		t.Fatalf("Put() on the first server: %v", err)
	}
}

// TestConnectErrors: what Connect refuses, each an ErrConfig error.
func TestConnectErrors(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dir string
		cfg       kvstore.Config
		want      string
	}{
		{"dir is a file", file, kvstore.Config{}, "pick a writable directory"},
		{"no dir", "", kvstore.Config{}, "--state-dir"},
		{"endpoints too", t.TempDir(), kvstore.Config{Endpoints: []string{"http://127.0.0.1:2379"}}, "keep one"},
		{"credentials", t.TempDir(), kvstore.Config{Username: "u", Password: "p"}, "--etcd-endpoints"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := embedded.Connect(testContext(t), tt.dir, tt.cfg)
			if err == nil {
				_ = c.Close()
				t.Fatal("Connect() succeeded")
			}
			if !errors.Is(err, kvstore.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Connect() = %v, want an ErrConfig error saying %q", err, tt.want)
			}
		})
	}
}

// TestServerConfig: a second client reaches the server through Config, and
// the server outlives that client.
func TestServerConfig(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv, err := embedded.Start(ctx, t.TempDir(), [2]int{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for i := range 2 {
		c, err := kvstore.New(ctx, srv.Config())
		if err != nil {
			t.Fatalf("New(srv.Config()) #%d: %v", i+1, err)
		}
		if err := c.Put(ctx, "/meshplane/v1/cfg", []byte(fmt.Sprint(i))); err != nil {
			t.Fatalf("Put() #%d: %v", i+1, err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
