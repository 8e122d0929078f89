package kubeapiserver_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kubeapiserver"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

var etcd *etcdtest.Server

func TestMain(m *testing.M) { os.Exit(etcdtest.RunMain(m, &etcd)) }

// binary returns the kube-apiserver binary, or skips (fails with
// MESHPLANE_REQUIRE_KUBE set).
func binary(t *testing.T) string {
	t.Helper()
	bin, err := kubeapiserver.Find()
	if err != nil {
		if os.Getenv("MESHPLANE_REQUIRE_KUBE") != "" {
			t.Fatalf("%v (MESHPLANE_REQUIRE_KUBE is set)", err)
		}
		t.Skip(err)
	}
	return bin
}

func TestStartBadConfig(t *testing.T) {
	for _, cfg := range []kubeapiserver.Config{
		{Dir: t.TempDir()},
		{EtcdEndpoints: []string{etcd.Endpoint()}},
	} {
		if _, err := kubeapiserver.Start(cfg); !errors.Is(err, kubeapiserver.ErrConfig) {
			t.Errorf("Start(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}

// TestStartRequestStop starts an apiserver outside kubetest: the admin is
// allowed, a limited user is authenticated but forbidden, the kubeconfigs
// name the server, and Stop kills the process.
func TestStartRequestStop(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	s, err := kubeapiserver.Start(kubeapiserver.Config{Binary: bin, Dir: dir, EtcdEndpoints: []string{etcd.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if !strings.HasPrefix(s.Host, "https://127.0.0.1:") || s.EtcdPrefix == "" || len(s.CAPEM) == 0 {
		t.Fatalf("server = host %q prefix %q, %d bytes of CA", s.Host, s.EtcdPrefix, len(s.CAPEM))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	code, body, err := s.Request(ctx, s.AdminToken, http.MethodGet, "/api/v1/namespaces", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("list namespaces as admin: %d %s %v", code, body, err)
	}
	users := s.Users()
	if len(users) != kubeapiserver.UserCount {
		t.Fatalf("%d users, want %d", len(users), kubeapiserver.UserCount)
	}
	if u, ok := s.User(users[3].Name); !ok || u != users[3] {
		t.Fatalf("User(%q) = %v, %v; want %v", users[3].Name, u, ok, users[3])
	}
	code, body, err = s.Request(ctx, users[0].Token, http.MethodGet, "/api/v1/pods", nil)
	if err != nil || code != http.StatusForbidden {
		t.Fatalf("list pods as %s: %d %s %v, want 403", users[0].Name, code, body, err)
	}
	code, _, err = s.Request(ctx, "wrong", http.MethodGet, "/api/v1/pods", nil)
	if err != nil || code != http.StatusUnauthorized {
		t.Fatalf("list pods with a bad token: %d %v, want 401", code, err)
	}
	ns := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "kubeapiserver-test"}}
	if err := s.Create(ctx, "/api/v1/namespaces", ns); err != nil {
		t.Fatal(err)
	}

	kc, err := s.WriteKubeconfig("u0", users[0].Name, users[0].Token)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{s.Host, users[0].Token, "current-context: " + kubeapiserver.ClusterName} {
		if !strings.Contains(string(b), want) {
			t.Errorf("kubeconfig %s lacks %q:\n%s", kc, want, b)
		}
	}
	if b, err := os.ReadFile(s.Kubeconfig); err != nil || !strings.Contains(string(b), s.AdminToken) {
		t.Errorf("admin kubeconfig %s: %v, or no admin token", s.Kubeconfig, err)
	}
	if s.Log() == "" {
		t.Error("Log is empty")
	}

	pid := s.PID()
	s.Stop()
	s.Stop() // idempotent
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("after Stop, kill(%d, 0) = %v, want ESRCH", pid, err)
	}
}
