package kubeapiserver_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

func TestBadConfig(t *testing.T) {
	for name, cfg := range map[string]kubeapiserver.Config{
		"no etcd": {Dir: t.TempDir()},
		"no dir":  {EtcdEndpoints: []string{etcd.Endpoint()}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := kubeapiserver.Prepare(cfg); !errors.Is(err, kubeapiserver.ErrConfig) {
				t.Errorf("Prepare(%+v) = %v, want ErrConfig", cfg, err)
			}
			if _, err := kubeapiserver.Start(cfg); !errors.Is(err, kubeapiserver.ErrConfig) {
				t.Errorf("Start(%+v) = %v, want ErrConfig", cfg, err)
			}
		})
	}
}

// TestPrepare checks the files and flags Prepare makes, without a process.
func TestPrepare(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	setup, err := kubeapiserver.Prepare(kubeapiserver.Config{Dir: dir, EtcdEndpoints: []string{etcd.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	if setup.Dir != dir || !strings.HasPrefix(setup.Host, "https://127.0.0.1:") || setup.EtcdPrefix == "" ||
		setup.AdminToken == "" || len(setup.Users) != kubeapiserver.UserCount {
		t.Fatalf("setup = dir %q host %q prefix %q, admin token %q, %d users", setup.Dir, setup.Host, setup.EtcdPrefix, setup.AdminToken, len(setup.Users))
	}
	for _, want := range []string{
		"--secure-port=" + setup.Host[len("https://127.0.0.1:"):],
		"--etcd-servers=" + etcd.Endpoint(),
		"--etcd-prefix=" + setup.EtcdPrefix,
		"--service-cluster-ip-range=" + kubeapiserver.DefaultServiceCIDR.String(),
	} {
		if !slices.Contains(setup.Args, want) {
			t.Errorf("args %q lack %q", setup.Args, want)
		}
	}
	ca, err := os.ReadFile(setup.CAFile)
	if err != nil || !bytes.Equal(ca, setup.CAPEM) {
		t.Errorf("CA file %s: %v, or not CAPEM", setup.CAFile, err)
	}
	tokens, err := os.ReadFile(filepath.Join(dir, "tokens.csv"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{setup.AdminToken + "," + kubeapiserver.AdminUser + ",", setup.Users[5].Token + "," + setup.Users[5].Name + ","} {
		if !strings.Contains(string(tokens), want) {
			t.Errorf("token file lacks %q", want)
		}
	}
	if b, err := os.ReadFile(setup.Kubeconfig); err != nil || !strings.Contains(string(b), setup.AdminToken) || !strings.Contains(string(b), setup.Host) {
		t.Errorf("admin kubeconfig %s: %v, or no admin token or host", setup.Kubeconfig, err)
	}

	setup, err = kubeapiserver.Prepare(kubeapiserver.Config{
		Dir: t.TempDir(), EtcdEndpoints: []string{etcd.Endpoint()},
		EtcdPrefix: "/given", ServiceCIDR: netip.MustParsePrefix("10.97.0.0/24"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if setup.EtcdPrefix != "/given" || !slices.Contains(setup.Args, "--etcd-prefix=/given") || !slices.Contains(setup.Args, "--service-cluster-ip-range=10.97.0.0/24") {
		t.Errorf("prefix %q, args %q: want the given prefix and service range", setup.EtcdPrefix, setup.Args)
	}
}

// TestPrepareExtra checks Prepare's extra users (with their groups, in
// the token file) and serving IPs (in the certificate), and refuses a
// user name that would break the token file.
func TestPrepareExtra(t *testing.T) {
	dir := t.TempDir()
	setup, err := kubeapiserver.Prepare(kubeapiserver.Config{
		Dir: dir, EtcdEndpoints: []string{etcd.Endpoint()},
		ServingIPs: []netip.Addr{netip.MustParseAddr("10.99.0.1")},
		ExtraUsers: []kubeapiserver.Identity{
			{Name: "system:node:n1", Groups: []string{"system:nodes", "extra"}},
			{Name: "system:kube-scheduler"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(setup.ExtraUsers) != 2 || setup.ExtraUsers[0].Name != "system:node:n1" || setup.ExtraUsers[1].Token == "" {
		t.Fatalf("extra users = %+v", setup.ExtraUsers)
	}
	tokens, err := os.ReadFile(filepath.Join(dir, "tokens.csv"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\n" + setup.ExtraUsers[0].Token + ",system:node:n1,uid-extra-0,\"system:nodes,extra\"\n",
		"\n" + setup.ExtraUsers[1].Token + ",system:kube-scheduler,uid-extra-1\n",
	} {
		if !strings.Contains(string(tokens), want) {
			t.Errorf("token file lacks %q", want)
		}
	}
	if _, err := os.Stat(setup.ServiceAccountKeyFile); err != nil {
		t.Errorf("service-account key: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatal("serving certificate: no PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.VerifyHostname("10.99.0.1"); err != nil {
		t.Errorf("serving certificate: %v", err)
	}
	if err := cert.VerifyHostname("kubernetes.default.svc"); err != nil {
		t.Errorf("serving certificate: %v", err)
	}
	kc, err := setup.WriteKubeconfig("scheduler", setup.ExtraUsers[1].Name, setup.ExtraUsers[1].Token)
	if b, rerr := os.ReadFile(kc); err != nil || rerr != nil || !strings.Contains(string(b), setup.ExtraUsers[1].Token) {
		t.Errorf("WriteKubeconfig: %v, %v", err, rerr)
	}

	_, err = kubeapiserver.Prepare(kubeapiserver.Config{
		Dir: t.TempDir(), EtcdEndpoints: []string{etcd.Endpoint()},
		ExtraUsers: []kubeapiserver.Identity{{Name: "a,b"}},
	})
	if !errors.Is(err, kubeapiserver.ErrConfig) {
		t.Errorf("Prepare with user \"a,b\" = %v, want ErrConfig", err)
	}
}

// TestPrepareApplyDelete runs the process Prepare sets up as the lab
// does (its own child, no parent-death signal), and creates, updates and
// deletes a namespace through Client by server-side apply.
func TestPrepareApplyDelete(t *testing.T) {
	bin := binary(t)
	setup, err := kubeapiserver.Prepare(kubeapiserver.Config{
		Dir: t.TempDir(), EtcdEndpoints: []string{etcd.Endpoint()}, EtcdPrefix: "/" + t.Name(),
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
	c, err := kubeapiserver.NewClient(kubeapiserver.Setup{Host: setup.Host, CAFile: setup.CAFile, AdminToken: setup.AdminToken})
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
	var se *kubeapiserver.StatusError
	if !kubeapiserver.IsNotFound(err) || !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("get of a missing object: %v; want a 404 StatusError", err)
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
	var se *kubeapiserver.StatusError
	if err := s.Create(ctx, "/api/v1/namespaces", ns); !errors.As(err, &se) || se.Code != http.StatusConflict {
		t.Fatalf("create again: %v; want a 409 StatusError", err)
	}
	if err := s.Client().Do(ctx, http.MethodGet, "/api/v1/namespaces/kubeapiserver-test", "", nil, nil); err != nil {
		t.Fatalf("get as the admin's Client: %v", err)
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
