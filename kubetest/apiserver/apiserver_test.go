package apiserver_test

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/kubetest/apiserver"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestPrepareApplyDelete starts the apiserver Prepare sets up against an
// embedded etcd, and creates, updates and deletes a namespace through
// Client by server-side apply.
func TestPrepareApplyDelete(t *testing.T) {
	bin, err := apiserver.Find()
	if err != nil {
		if os.Getenv("MESHPLANE_REQUIRE_KUBE") != "" {
			t.Fatalf("%v (MESHPLANE_REQUIRE_KUBE is set)", err)
		}
		t.Skip(err)
	}
	etcd := etcdtest.Start(t)
	setup, err := apiserver.Prepare(apiserver.Config{
		Dir: t.TempDir(), EtcdServers: []string{etcd.Endpoint()}, EtcdPrefix: "/apiserver-test",
		ServiceCIDR: netip.MustParsePrefix("10.97.0.0/24"),
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, setup.Args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	c, err := apiserver.NewClient(setup)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	gone := func() bool {
		select {
		case <-exited:
			return true
		default:
			return false
		}
	}
	if err := c.WaitReady(ctx, gone); err != nil {
		t.Fatal(err)
	}
	type ns struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	apply := func(labels map[string]string) {
		t.Helper()
		obj := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "a", "labels": labels}}
		if err := c.Apply(ctx, "/api/v1/namespaces/a", "test", obj); err != nil {
			t.Fatal(err)
		}
	}
	apply(map[string]string{"x": "1", "y": "2"})
	apply(map[string]string{"x": "3"}) // y was ours: it goes
	var got ns
	if err := c.Do(ctx, http.MethodGet, "/api/v1/namespaces/a", "", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got.Metadata.Labels["x"] != "3" || got.Metadata.Labels["y"] != "" {
		t.Fatalf("labels after two applies: %v; want x=3 and no y", got.Metadata.Labels)
	}
	if err := c.Delete(ctx, "/api/v1/namespaces/nothere"); err != nil {
		t.Fatalf("delete of a missing object: %v; want nil", err)
	}
	err = c.Do(ctx, http.MethodGet, "/api/v1/namespaces/nothere", "", nil, nil)
	var se *apiserver.StatusError
	if !apiserver.IsNotFound(err) || !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("get of a missing object: %v; want a 404 StatusError", err)
	}
}

func TestPrepareNeedsConfig(t *testing.T) {
	if _, err := apiserver.Prepare(apiserver.Config{Dir: t.TempDir()}); err == nil {
		t.Fatal("Prepare without etcd, prefix and service CIDR: want an error")
	}
}
