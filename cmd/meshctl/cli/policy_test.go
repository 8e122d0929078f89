package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/policy"
)

const policyFile = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: prod
spec:
  podSelector:
    matchLabels: {app: web}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
    ports:
    - port: 8080
---
apiVersion: meshplane.io/v1alpha1
kind: MeshNetworkPolicy
metadata:
  name: default-deny
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  egress:
  - to:
    - namespaceSelector: {}
      clusters: ["*"]
`

// writeFile writes content to a file in the test's temp dir.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// storedPolicies lists the keys under the cluster's policy prefix.
func storedPolicies(t *testing.T, cluster string) []string {
	t.Helper()
	keys, _ := kvstore.NewKeys(cluster)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kvs, _, err := srv.Client(t).List(ctx, keys.PoliciesPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range kvs {
		out = append(out, strings.TrimPrefix(kv.Key, keys.PoliciesPrefix()))
	}
	return out
}

func TestPolicyApplyListGetDelete(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	cluster := g[3]
	file := writeFile(t, "policies.yaml", policyFile)

	out := mustRun(t, append(g, "policy", "apply", "-f", file)...)
	if want := "policy prod/allow-web configured\npolicy default/default-deny configured\n"; out != want {
		t.Fatalf("apply printed %q, want %q", out, want)
	}
	if got, want := storedPolicies(t, cluster), []string{"default/default-deny", "prod/allow-web"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("stored keys %v, want %v", got, want)
	}
	// Applying again replaces.
	mustRun(t, append(g, "policy", "apply", "-f", file)...)

	var list []policyInfo
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "policy", "list", "-o", "json")...)), &list); err != nil {
		t.Fatal(err)
	}
	want := []policyInfo{
		{Namespace: "default", Name: "default-deny", Kind: policy.KindMeshNetworkPolicy, Selector: "", IngressRules: new(0), EgressRules: new(1)},
		{Namespace: "prod", Name: "allow-web", Kind: policy.KindNetworkPolicy, Selector: "app=web", IngressRules: new(1)},
	}
	if !reflect.DeepEqual(list, want) {
		t.Fatalf("list -o json = %+v, want %+v", list, want)
	}
	table := mustRun(t, append(g, "policy", "list")...)
	for _, w := range []string{
		"NAMESPACE  NAME          KIND               SELECTOR  INGRESS-RULES  EGRESS-RULES\n",
		"default    default-deny  MeshNetworkPolicy  <all>     0              1\n",
		"prod       allow-web     NetworkPolicy      app=web   1              -\n",
	} {
		if !strings.Contains(table, w) {
			t.Errorf("list table lacks %q:\n%s", w, table)
		}
	}
	if strings.Contains(table, "ERROR") {
		t.Errorf("list table has an ERROR column with no invalid policy:\n%s", table)
	}
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "policy", "list", "-n", "prod", "-o", "json")...)), &list); err != nil || len(list) != 1 || list[0].Name != "allow-web" {
		t.Fatalf("list -n prod = %+v, %v", list, err)
	}

	// get prints a manifest that parses back to the applied policy.
	applied, err := policy.Parse([]byte(policyFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"prod/allow-web"}, {"allow-web", "-n", "prod"}, {"prod/allow-web", "-o", "json"}} {
		got, err := policy.Parse([]byte(mustRun(t, append(append(g, "policy", "get"), args...)...)))
		if err != nil {
			t.Fatalf("get %v: %v", args, err)
		}
		if !reflect.DeepEqual(got[0], applied[0]) {
			t.Fatalf("get %v = %+v, want %+v", args, got[0], applied[0])
		}
	}

	// delete: by ns/name, by -n, and the default namespace.
	if out := mustRun(t, append(g, "policy", "delete", "prod/allow-web")...); out != "policy prod/allow-web deleted\n" {
		t.Fatalf("delete printed %q", out)
	}
	if _, _, err := meshctl(t, append(g, "policy", "delete", "allow-web", "-n", "prod")...); !errors.Is(err, ErrNotFound) ||
		!strings.Contains(err.Error(), "policy prod/allow-web not found") {
		t.Fatalf("deleting a deleted policy: %v", err)
	}
	if _, _, err := meshctl(t, append(g, "policy", "get", "prod/allow-web")...); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get of a deleted policy: %v", err)
	}
	if _, _, err := meshctl(t, append(g, "policy", "delete", "prod/default-deny", "-n", "other")...); err == nil ||
		!strings.Contains(err.Error(), "--namespace is other") {
		t.Fatalf("delete with conflicting namespaces: %v", err)
	}
	mustRun(t, append(g, "policy", "delete", "default-deny")...)
	if got := storedPolicies(t, cluster); len(got) != 0 {
		t.Fatalf("keys left after deleting everything: %v", got)
	}
}

func TestPolicyApplyInvalidWritesNothing(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	cluster := g[3]
	bad := policyFile + `---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 192.168.0.0/16, except: [10.0.0.0/8]}
`
	file := writeFile(t, "bad.yaml", bad)
	out, _, err := meshctl(t, append(g, "policy", "apply", "-f", file)...)
	if !errors.Is(err, policy.ErrInvalid) {
		t.Fatalf("apply of an invalid file: %v", err)
	}
	for _, w := range []string{file + ": nothing applied", `policy "deny-all" (document 3): spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/8 is not inside cidr 192.168.0.0/16`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if out != "" {
		t.Errorf("apply printed %q", out)
	}
	if got := storedPolicies(t, cluster); len(got) != 0 {
		t.Fatalf("an invalid apply wrote %v", got)
	}

	// Too many policies for one transaction: refused whole.
	var many strings.Builder
	for i := range kvstore.MaxTxnOps + 1 {
		fmt.Fprintf(&many, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d}\nspec: {podSelector: {}}\n", i)
	}
	_, _, err = meshctl(t, append(g, "policy", "apply", "-f", writeFile(t, "many.yaml", many.String()))...)
	if err == nil || !strings.Contains(err.Error(), "129 policies is more than the 128") {
		t.Fatalf("apply of %d policies: %v", kvstore.MaxTxnOps+1, err)
	}
	if got := storedPolicies(t, cluster); len(got) != 0 {
		t.Fatalf("a refused apply wrote %v", got)
	}
	if _, _, err := meshctl(t, append(g, "policy", "apply", "-f", filepath.Join(t.TempDir(), "missing.yaml"))...); err == nil {
		t.Fatal("apply of a missing file succeeded")
	}
}

func TestPolicyApplyStdin(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	var out, errOut bytes.Buffer
	cmd := New(&out, &errOut)
	cmd.SetIn(strings.NewReader(policyFile))
	cmd.SetArgs(append(g, "policy", "apply", "-f", "-"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatalf("apply -f -: %v (stderr: %s)", err, errOut.String())
	}
	if got := storedPolicies(t, g[3]); len(got) != 2 {
		t.Fatalf("stored %v, want 2 policies", got)
	}
}

func TestPolicyListShowsInvalidValues(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	cluster := g[3]
	mustRun(t, append(g, "policy", "apply", "-f", writeFile(t, "p.yaml", policyFile))...)
	keys, _ := kvstore.NewKeys(cluster)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := srv.Client(t)
	if err := c.Put(ctx, keys.Policy("prod", "garbage"), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	// A valid policy stored under another policy's key.
	b, err := (&policy.Policy{Kind: policy.KindNetworkPolicy, Namespace: "prod", Name: "a"}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, keys.Policy("prod", "b"), b); err != nil {
		t.Fatal(err)
	}
	table := mustRun(t, append(g, "policy", "list")...)
	for _, w := range []string{"ERROR", "prod       allow-web", "prod       garbage       -                  -         -              -             invalid policy: not JSON", "the value is policy prod/a, not prod/b"} {
		if !strings.Contains(table, w) {
			t.Errorf("list table lacks %q:\n%s", w, table)
		}
	}
	var list []policyInfo
	if err := json.Unmarshal([]byte(mustRun(t, append(g, "policy", "list", "-o", "json")...)), &list); err != nil || len(list) != 4 {
		t.Fatalf("list -o json = %+v, %v", list, err)
	}
	if _, _, err := meshctl(t, append(g, "policy", "get", "prod/garbage")...); !errors.Is(err, policy.ErrInvalid) ||
		!strings.Contains(err.Error(), "is corrupt") {
		t.Fatalf("get of a corrupt policy: %v", err)
	}
	// A corrupt policy can still be deleted.
	mustRun(t, append(g, "policy", "delete", "prod/garbage")...)
}

func TestPolicyName(t *testing.T) {
	tests := []struct {
		arg, ns          string
		wantNS, wantName string
		wantErr          bool
	}{
		{arg: "web", wantNS: "default", wantName: "web"},
		{arg: "web", ns: "prod", wantNS: "prod", wantName: "web"},
		{arg: "prod/web", wantNS: "prod", wantName: "web"},
		{arg: "prod/web", ns: "prod", wantNS: "prod", wantName: "web"},
		{arg: "prod/web", ns: "dev", wantErr: true},
		{arg: "/web", wantErr: true},
		{arg: "prod/", wantErr: true},
		{arg: "a/b/c", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.arg+","+tt.ns, func(t *testing.T) {
			ns, name, err := policyName(tt.arg, tt.ns)
			if (err != nil) != tt.wantErr || ns != tt.wantNS || name != tt.wantName {
				t.Fatalf("policyName(%q, %q) = %q, %q, %v", tt.arg, tt.ns, ns, name, err)
			}
		})
	}
}

// TestPolicyApplyLimits: a file over the input limit, or policies that
// would not fit one etcd request, are refused whole with a message that
// names the limit, not etcd's "request is too large".
func TestPolicyApplyLimits(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	cluster := g[3]
	huge := policyFile + "# " + strings.Repeat("x", policy.MaxInputBytes) + "\n"
	_, _, err := meshctl(t, append(g, "policy", "apply", "-f", writeFile(t, "huge.yaml", huge))...)
	if !errors.Is(err, policy.ErrInvalid) || !strings.Contains(err.Error(), "at most 1048576 bytes") {
		t.Fatalf("apply of a %d-byte file: %v, want ErrInvalid naming the limit", len(huge), err)
	}

	// Each policy is small; together they are more than one request holds
	// (their stored form spells out the default protocol of every port).
	var many strings.Builder
	ports := strings.TrimSuffix(strings.Repeat("{port: 1}, ", 1000), ", ")
	for i := range 80 {
		fmt.Fprintf(&many, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%d}\nspec: {podSelector: {}, ingress: [{ports: [%s]}]}\n", i, ports)
	}
	if many.Len() > policy.MaxInputBytes {
		t.Fatalf("test input is %d bytes, over the input limit", many.Len())
	}
	_, _, err = meshctl(t, append(g, "policy", "apply", "-f", writeFile(t, "many.yaml", many.String()))...)
	if err == nil || !strings.Contains(err.Error(), "nothing applied") || !strings.Contains(err.Error(), "at most 1048576 bytes go in one apply") {
		t.Fatalf("apply of policies too large for one transaction: %v", err)
	}
	if got := storedPolicies(t, cluster); len(got) != 0 {
		t.Fatalf("a refused apply wrote %v", got)
	}
}

// TestPolicyApplyRefusedWhileControlPlaneOwnsPolicies: while a
// mesh-controlplane that writes policies/ from Kubernetes leads, apply and
// delete refuse (its resync would undo them) and write nothing; a leader
// that owns no policies (the lab's) leaves them alone.
func TestPolicyApplyRefusedWhileControlPlaneOwnsPolicies(t *testing.T) {
	t.Parallel()
	g := inCluster(t)
	cluster := g[3]
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, "policies.yaml", policyFile)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := srv.Client(t)
	lead := func(info controlplane.LeaderInfo) *kvstore.Leadership {
		t.Helper()
		v, err := json.Marshal(info)
		if err != nil {
			t.Fatal(err)
		}
		l, err := kvstore.Campaign(ctx, client, keys.Leader(controlplane.ElectionName), kvstore.ElectionConfig{Value: string(v), TTL: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}

	lab := lead(controlplane.LeaderInfo{Name: "lab", Owns: []string{"pods", "namespaces", "services"}})
	mustRun(t, append(g, "policy", "apply", "-f", file)...)
	if err := lab.Resign(ctx); err != nil {
		t.Fatal(err)
	}

	cp := lead(controlplane.LeaderInfo{Name: "cp-1", Owns: []string{"pods", "namespaces", "services", "policies", "members"}})
	defer func() { _ = cp.Resign(context.Background()) }()
	before := storedPolicies(t, cluster)
	for _, args := range [][]string{{"policy", "apply", "-f", file}, {"policy", "delete", "prod/allow-web"}} {
		_, _, err := meshctl(t, append(g, args...)...)
		if !errors.Is(err, errPoliciesOwned) || !strings.Contains(err.Error(), `mesh-controlplane "cp-1"`) || !strings.Contains(err.Error(), "kubectl") {
			t.Errorf("%v while cp-1 owns policies: %v, want a refusal naming cp-1 and kubectl", args, err)
		}
	}
	if got := storedPolicies(t, cluster); !reflect.DeepEqual(got, before) {
		t.Errorf("stored policies changed from %v to %v", before, got)
	}
}
