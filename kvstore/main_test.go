package kvstore_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/embedded"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// shared is the embedded etcd that most tests of this binary share; they
// stay apart by key prefix. Tests that stop, restart, compact or enable auth
// start their own server with etcdtest.Start.
var shared *embedded.Server

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "kvstore-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	shared, err = embedded.Start(ctx, dir, [2]int{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	shared.Close()
	if code != 0 {
		return code
	}
	// Every client, session, cache and server a test started must be gone.
	if err := goleak.Find(); err != nil {
		fmt.Fprintln(os.Stderr, "goleak:", err)
		return 1
	}
	return 0
}

// sharedConfig returns a config that connects to the shared server.
func sharedConfig() kvstore.Config {
	return kvstore.Config{Endpoints: []string{shared.ClientURL()}, DialTimeout: 5 * time.Second}
}

// newClient connects to the shared server; the client is closed when the
// test ends.
func newClient(t testing.TB) *kvstore.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kvstore.New(ctx, sharedConfig())
	if err != nil {
		t.Fatalf("connect to shared etcd: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testPrefix returns a key prefix of the test's own, under kvstore.Root.
func testPrefix(t testing.TB) string {
	t.Helper()
	keys, err := kvstore.NewKeys(etcdtest.Cluster(t))
	if err != nil {
		t.Fatal(err)
	}
	return keys.Prefix()
}

// eventually polls cond until it returns nil or the deadline passes. It is
// the only way these tests wait for something to happen.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testContext returns a context that ends with the test, bounded so that a
// hung call fails the test instead of the whole binary.
func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}
