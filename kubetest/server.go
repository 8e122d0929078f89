package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshplane/meshplane/kubeapiserver"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// Server is a running kube-apiserver for tests: a kubeapiserver.Server
// (Host, CAPEM, CAFile, AdminToken, Kubeconfig, EtcdPrefix, Create,
// Request, Log, Stop) with the test-facing helpers around it.
type Server struct {
	*kubeapiserver.Server
	// Etcd is the embedded etcd RunMain started the apiserver on; nil
	// for Start.
	Etcd *etcdtest.Server

	skip   error // RunMain found no binary: Require skips
	grants atomic.Int64

	mu       sync.Mutex // mu guards nextUser
	nextUser int
}

// User is a user of the static token file with no permissions of its own:
// only what system:authenticated may do (discovery, self reviews) until a
// test grants it more.
type User = kubeapiserver.User

// Rule is a cluster-wide RBAC permission, as in a ClusterRole.
type Rule struct {
	APIGroups []string // "" is the core group
	Resources []string
	Verbs     []string
}

// AdminUser is the admin's user name.
const AdminUser = kubeapiserver.AdminUser

// Start starts a kube-apiserver against the etcd at etcdEndpoints, under an
// etcd prefix of its own, and waits until it is ready. It is stopped when
// the test ends. Without the binary the test is skipped (it fails when
// MESHPLANE_REQUIRE_KUBE is set).
func Start(tb testing.TB, etcdEndpoints []string) *Server {
	tb.Helper()
	bin, err := Find()
	if err != nil {
		skipOrFail(tb, err)
	}
	return start(tb, bin, etcdEndpoints)
}

func start(tb testing.TB, bin string, etcdEndpoints []string) *Server {
	tb.Helper()
	s, err := kubeapiserver.Start(kubeapiserver.Config{Binary: bin, Dir: tb.TempDir(), EtcdEndpoints: etcdEndpoints})
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return &Server{Server: s}
}

// Require skips the test (or fails it, with MESHPLANE_REQUIRE_KUBE set) when
// RunMain found no kube-apiserver binary. Tests of a package whose
// TestMain is RunMain call it first.
func (s *Server) Require(tb testing.TB) {
	tb.Helper()
	if s == nil {
		tb.Fatal("kubetest: no server: call kubetest.RunMain in TestMain")
	}
	if s.skip != nil {
		skipOrFail(tb, s.skip)
	}
}

func required() bool { return os.Getenv("MESHPLANE_REQUIRE_KUBE") != "" }

func skipOrFail(tb testing.TB, err error) {
	tb.Helper()
	if required() {
		tb.Fatalf("kubetest: %v (MESHPLANE_REQUIRE_KUBE is set)", err)
	}
	tb.Skipf("kubetest: %v", err)
}

// NewUser returns a user no other test of this server has had: it may do
// only what system:authenticated may until Grant gives it more.
func (s *Server) NewUser(tb testing.TB) User {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	users := s.Users()
	if s.nextUser == len(users) {
		tb.Fatalf("kubetest: all %d users are taken; raise kubeapiserver.UserCount", len(users))
	}
	u := users[s.nextUser]
	s.nextUser++
	return u
}

// KubeconfigFor writes a kubeconfig file for u and returns its path.
func (s *Server) KubeconfigFor(tb testing.TB, u User) string {
	tb.Helper()
	p, err := s.WriteKubeconfig(u.Name, u.Name, u.Token)
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	return p
}

// Grant gives u the rules cluster-wide (a ClusterRole and a
// ClusterRoleBinding) and returns once the apiserver's authorizer allows
// every verb on every resource in them.
func (s *Server) Grant(tb testing.TB, u User, rules ...Rule) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := fmt.Sprintf("kubetest-%s-%d", u.Name, s.grants.Add(1))
	var rs []map[string]any
	for _, r := range rules {
		rs = append(rs, map[string]any{"apiGroups": r.APIGroups, "resources": r.Resources, "verbs": r.Verbs})
	}
	role := map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
		"metadata": map[string]any{"name": name}, "rules": rs,
	}
	binding := map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
		"metadata": map[string]any{"name": name},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
		"subjects": []map[string]any{{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u.Name}},
	}
	if err := s.Create(ctx, "/apis/rbac.authorization.k8s.io/v1/clusterroles", role); err != nil {
		tb.Fatalf("kubetest: grant: %v", err)
	}
	if err := s.Create(ctx, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding); err != nil {
		tb.Fatalf("kubetest: grant: %v", err)
	}
	// The RBAC authorizer reads roles from an informer: wait until it has
	// these.
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if err := s.waitAllowed(ctx, u.Name, g, res, v); err != nil {
						tb.Fatalf("kubetest: grant: %v", err)
					}
				}
			}
		}
	}
}

func (s *Server) waitAllowed(ctx context.Context, user, group, resource, verb string) error {
	review := map[string]any{
		"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
		"spec": map[string]any{
			"user":               user,
			"resourceAttributes": map[string]any{"group": group, "resource": resource, "verb": verb},
		},
	}
	for {
		var out struct {
			Status struct {
				Allowed bool `json:"allowed"`
			} `json:"status"`
		}
		code, body, err := s.Request(ctx, s.AdminToken, http.MethodPost, "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
		if err != nil {
			return err
		}
		if code != http.StatusCreated && code != http.StatusOK {
			return fmt.Errorf("subject access review: %d %s", code, body)
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return fmt.Errorf("subject access review: %w", err)
		}
		if out.Status.Allowed {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s may still not %s %s in group %q: %w", user, verb, resource, group, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var nsSeq atomic.Int64

// Namespace creates a namespace no other test of this binary uses and
// returns its name. Namespaces are not deleted: without a controller
// manager they would only stay Terminating.
func (s *Server) Namespace(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("kt-%d-%d", os.Getpid()%100000, nsSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name}}
	if err := s.Create(ctx, "/api/v1/namespaces", ns); err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	return name
}
