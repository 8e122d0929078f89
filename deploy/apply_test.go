package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshplane/meshplane/controlplane/k8s"
)

// cluster is the test's client of the kube-apiserver, as its admin.
type cluster struct {
	rest   *rest.Config
	dyn    dynamic.Interface
	kube   kubernetes.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	kube.Require(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", kube.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 200, 400 // client-go's 5/s would pace the test
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{
		rest:   cfg,
		dyn:    dynamic.NewForConfigOrDie(cfg),
		kube:   kubernetes.NewForConfigOrDie(cfg),
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)),
	}
}

var nsSeq atomic.Int64

// isolate moves a render into a namespace of its own, so that renders
// applied to the same apiserver do not meet: the namespace of every
// namespaced object and of the ServiceAccount subjects, the Namespace
// object, and the names of the cluster-wide RBAC objects. The CRDs are
// shared (their names are fixed).
func isolate(objs []obj) ([]obj, string) {
	ns := fmt.Sprintf("mp-deploy-%d-%d", os.Getpid()%100000, nsSeq.Add(1))
	out := make([]obj, 0, len(objs))
	for _, o := range objs {
		o = deepCopy(o)
		md := o["metadata"].(obj)
		switch o["kind"] {
		case "Namespace":
			md["name"] = ns
		case "CustomResourceDefinition":
		case "ClusterRole":
			md["name"] = md["name"].(string) + "-" + ns
		case "ClusterRoleBinding":
			md["name"] = md["name"].(string) + "-" + ns
			ref := o["roleRef"].(obj)
			ref["name"] = ref["name"].(string) + "-" + ns
			for _, s := range o["subjects"].([]any) {
				if s := s.(obj); s["kind"] == "ServiceAccount" {
					s["namespace"] = ns
				}
			}
		default:
			md["namespace"] = ns
		}
		out = append(out, o)
	}
	if !slices.ContainsFunc(out, func(o obj) bool { return o["kind"] == "Namespace" }) {
		// helm install --create-namespace
		out = append(out, obj{"apiVersion": "v1", "kind": "Namespace", "metadata": obj{"name": ns}})
	}
	return out, ns
}

// order puts Namespaces first, then CRDs, then the rest as rendered.
func order(objs []obj) []obj {
	rank := func(o obj) int {
		switch o["kind"] {
		case "Namespace":
			return 0
		case "CustomResourceDefinition":
			return 1
		}
		return 2
	}
	out := append([]obj(nil), objs...)
	sort.SliceStable(out, func(i, j int) bool { return rank(out[i]) < rank(out[j]) })
	return out
}

func (c *cluster) resource(t *testing.T, o obj) dynamic.ResourceInterface {
	t.Helper()
	gv, err := schema.ParseGroupVersion(o["apiVersion"].(string))
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.mapper.RESTMapping(schema.GroupKind{Group: gv.Group, Kind: o["kind"].(string)}, gv.Version)
	if err != nil {
		t.Fatalf("%s: %v", key(o), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns, _ := get(o, "metadata", "namespace").(string)
		if ns == "" {
			t.Fatalf("%s: namespaced, but no namespace", key(o))
		}
		return c.dyn.Resource(m.Resource).Namespace(ns)
	}
	return c.dyn.Resource(m.Resource)
}

var (
	dryRun = metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict}
	strict = metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}
)

// install applies objs as kubectl apply would on a new cluster, with the
// apiserver as the schema: each object is first created in a server-side
// dry run with strict field validation (an unknown or misspelt field
// fails), then for real, then read back: everything sent must be there.
// A CRD that exists already is updated instead (dry run first too).
func (c *cluster) install(t *testing.T, objs []obj) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, o := range order(objs) {
		r := c.resource(t, o)
		u := &unstructured.Unstructured{Object: deepCopy(o)}
		if o["kind"] == "Namespace" {
			if _, err := r.Get(ctx, u.GetName(), metav1.GetOptions{}); err == nil {
				continue // an install again, into the namespace kept
			}
		}
		if o["kind"] == "CustomResourceDefinition" {
			if have, err := r.Get(ctx, u.GetName(), metav1.GetOptions{}); err == nil {
				u.SetResourceVersion(have.GetResourceVersion())
				if _, err := r.Update(ctx, u, metav1.UpdateOptions{DryRun: dryRun.DryRun, FieldValidation: metav1.FieldValidationStrict}); err != nil {
					t.Fatalf("%s: dry-run update: %v", key(o), err)
				}
				if _, err := r.Update(ctx, u, metav1.UpdateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil {
					t.Fatalf("%s: update: %v", key(o), err)
				}
				c.readBack(ctx, t, r, o)
				continue
			}
		}
		if _, err := r.Create(ctx, u, dryRun); err != nil {
			t.Fatalf("%s: server-side dry run: %v", key(o), err)
		}
		if _, err := r.Create(ctx, u, strict); err != nil {
			t.Fatalf("%s: create: %v", key(o), err)
		}
		c.readBack(ctx, t, r, o)
	}
}

func (c *cluster) readBack(ctx context.Context, t *testing.T, r dynamic.ResourceInterface, o obj) {
	t.Helper()
	got, err := r.Get(ctx, get(o, "metadata", "name").(string), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%s: read back: %v", key(o), err)
	}
	if where := missing(got.Object, deepCopy(o), ""); where != "" {
		t.Errorf("%s read back without what was sent: %s", key(o), where)
	}
}

// missing returns where got lacks something of want ("" if nothing):
// every key of a map, every element of a list (same length), every value.
func missing(got, want any, path string) string {
	switch w := want.(type) {
	case obj:
		g, ok := got.(obj)
		if !ok {
			return fmt.Sprintf("%s: %v, want a map", path, got)
		}
		for k, wv := range w {
			if where := missing(g[k], wv, path+"."+k); where != "" {
				return where
			}
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Sprintf("%s: %v, want %v", path, got, w)
		}
		for i := range w {
			if where := missing(g[i], w[i], fmt.Sprintf("%s[%d]", path, i)); where != "" {
				return where
			}
		}
	case float64:
		if g, ok := got.(int64); ok && float64(g) == w {
			return ""
		}
		if !reflect.DeepEqual(got, w) {
			return fmt.Sprintf("%s: %v, want %v", path, got, w)
		}
	default:
		if !reflect.DeepEqual(got, w) {
			return fmt.Sprintf("%s: %v, want %v", path, got, w)
		}
	}
	return ""
}

// TestApply applies every overlay and the chart (its defaults and each
// overlay's values) to a real kube-apiserver: server-side dry run with
// strict field validation, then create, then read back.
func TestApply(t *testing.T) {
	c := newCluster(t)
	all := renders(t)
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			objs, _ := isolate(all[name])
			c.install(t, objs)
		})
	}
}

// TestStrictValidation: the dry run is a schema check: a misspelt field
// fails it.
func TestStrictValidation(t *testing.T) {
	c := newCluster(t)
	objs, ns := isolate(kustomize(t, overlays["single"]))
	c.install(t, []obj{find(t, objs, "Namespace", ns)})
	ds := deepCopy(find(t, objs, "DaemonSet", "mesh-agent"))
	get(ds, "spec", "template", "spec").(obj)["hostNetwrk"] = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.resource(t, ds).Create(ctx, &unstructured.Unstructured{Object: ds}, dryRun)
	if err == nil || !strings.Contains(err.Error(), "hostNetwrk") {
		t.Fatalf("dry run of a DaemonSet with a misspelt field = %v, want an error naming it", err)
	}
}

// TestRBAC installs the single overlay and checks, as the control plane's
// ServiceAccount (impersonated), that its RBAC is enough: controlplane/k8s'
// own permission check (Source.Check: list and watch of everything it
// translates, Events, the verdicts and views on meshplane.io) passes.
// And that it is no more than that: no Secrets, no CRD writes, no pod or
// node writes. The agents' ServiceAccount may do nothing at all.
func TestRBAC(t *testing.T) {
	c := newCluster(t)
	objs, ns := isolate(kustomize(t, overlays["single"]))
	c.install(t, objs)
	sa := func(name string) (string, []string) {
		return "system:serviceaccount:" + ns + ":" + name,
			[]string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	}

	user, groups := sa("mesh-controlplane")
	cfg := rest.CopyConfig(c.rest)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	src, err := k8s.New(k8s.Config{REST: cfg, SkipCRDInstall: true})
	if err != nil {
		t.Fatal(err)
	}
	// The RBAC authorizer learns of new bindings from an informer: poll.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = src.Check(context.Background())
		if err == nil || !errors.Is(err, k8s.ErrForbidden) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the control plane's permission check as %s: %v", user, err)
	}

	denied := []authorizationv1.ResourceAttributes{
		{Verb: "get", Resource: "secrets", Namespace: ns},
		{Verb: "list", Resource: "secrets"},
		{Verb: "watch", Resource: "configmaps"},
		{Verb: "create", Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions"},
		{Verb: "patch", Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions"},
		{Verb: "create", Resource: "pods", Namespace: ns},
		{Verb: "delete", Resource: "pods", Namespace: ns},
		{Verb: "update", Resource: "nodes"},
		{Verb: "update", Resource: "services", Namespace: ns},
		{Verb: "delete", Group: "networking.k8s.io", Resource: "networkpolicies", Namespace: ns},
		{Verb: "update", Group: "meshplane.io", Resource: "meshnetworkpolicies", Namespace: ns},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings"},
	}
	for _, ra := range denied {
		if c.allowed(t, user, groups, ra) {
			t.Errorf("the control plane may %s %s.%s: more than it needs", ra.Verb, ra.Resource, ra.Group)
		}
	}
	agent, agentGroups := sa("mesh-agent")
	for _, ra := range []authorizationv1.ResourceAttributes{
		{Verb: "list", Resource: "pods"},
		{Verb: "get", Resource: "nodes"},
		{Verb: "list", Resource: "services"},
		{Verb: "get", Resource: "secrets", Namespace: ns},
		{Verb: "list", Group: "meshplane.io", Resource: "meshnetworkpolicies"},
		{Verb: "create", Resource: "events", Namespace: ns},
	} {
		if c.allowed(t, agent, agentGroups, ra) {
			t.Errorf("the agent may %s %s.%s: agents need no Kubernetes RBAC", ra.Verb, ra.Resource, ra.Group)
		}
	}
	ds := find(t, objs, "DaemonSet", "mesh-agent")
	if get(ds, "spec", "template", "spec", "automountServiceAccountToken") != false {
		t.Error("the agent's pods mount a ServiceAccount token")
	}
}

func (c *cluster) allowed(t *testing.T, user string, groups []string, ra authorizationv1.ResourceAttributes) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := c.kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups, ResourceAttributes: &ra},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Status.Allowed
}

// TestUninstall installs the single overlay, uninstalls it as kubectl
// delete -k does (everything but the Namespace, which without a namespace
// controller would stay Terminating here: a real cluster deletes it too),
// CRDs included; runs the cleanup overlay's objects in the same namespace
// and deletes them; then installs again: nothing left behind is in the
// way.
func TestUninstall(t *testing.T) {
	c := newCluster(t)
	objs, ns := isolate(kustomize(t, overlays["single"]))
	c.install(t, objs)
	c.uninstall(t, objs)

	cleanup, _ := isolate(kustomize(t, overlays["cleanup"]))
	var inNS []obj
	for _, o := range cleanup {
		if o["kind"] != "Namespace" {
			get(o, "metadata").(obj)["namespace"] = ns
			inNS = append(inNS, o)
		}
	}
	c.install(t, inNS)
	c.uninstall(t, inNS)

	c.install(t, objs)
}

// uninstall deletes objs but the Namespaces, and waits until each is gone
// (CRDs take a moment: the apiserver removes their objects first).
func (c *cluster) uninstall(t *testing.T, objs []obj) {
	t.Helper()
	// A generous deadline: the apiserver's CRD finalizer was seen to take
	// over a minute on a loaded machine under -race.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, o := range objs {
		if o["kind"] == "Namespace" {
			continue
		}
		name := get(o, "metadata", "name").(string)
		if err := c.resource(t, o).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete %s: %v", key(o), err)
		}
	}
	for _, o := range objs {
		if o["kind"] == "Namespace" {
			continue
		}
		name := get(o, "metadata", "name").(string)
		for {
			got, err := c.resource(t, o).Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				break
			}
			if ctx.Err() != nil {
				var status any
				if got != nil {
					status = got.Object["status"]
				}
				t.Fatalf("%s is still there after delete: %v; status %v", key(o), err, status)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
