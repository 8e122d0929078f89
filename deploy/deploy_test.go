package deploy_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/meshplane/meshplane/cmd/mesh-agent/agentcmd"
	"github.com/meshplane/meshplane/cmd/mesh-controlplane/cpcmd"
	"github.com/meshplane/meshplane/deploy/crds"
	"github.com/meshplane/meshplane/kubetest"
)

var kube *kubetest.Server

func TestMain(m *testing.M) {
	// helm's chart loader logs each symbolic link it follows
	// (helm/meshplane/files/crds) through the standard logger.
	log.SetOutput(io.Discard)
	os.Exit(kubetest.RunMain(m, &kube))
}

// defaultValues are the least a helm install needs: the chart's defaults
// and an etcd.
var defaultValues = obj{"etcd": obj{"endpoints": []any{"https://etcd.example:2379"}}}

// renders are every way the manifests are installed: each overlay, and
// the chart with its defaults and with each overlay's values.
func renders(t *testing.T) map[string][]obj {
	t.Helper()
	out := map[string][]obj{
		"helm defaults": mustHelm(t, nil, defaultValues),
		// A test node's private directories (kubenode).
		"helm private host paths": mustHelm(t, nil, obj{"etcd": defaultValues["etcd"], "hostPaths": obj{
			"bpffs": "/sys/fs/bpf/mp-test", "run": "/tmp/mp-test/run", "state": "/tmp/mp-test/state",
			"cniBin": "/tmp/mp-test/cni/bin", "cniConf": "/tmp/mp-test/cni/net.d",
		}}),
	}
	for name, dir := range overlays {
		out["kustomize "+name] = kustomize(t, dir)
		out["helm "+name] = mustHelm(t, []string{"ci/" + name + "-values.yaml"}, nil)
	}
	return out
}

// TestRender: every overlay and the chart render, and every object is
// named and has a kind.
func TestRender(t *testing.T) {
	for name, objs := range renders(t) {
		t.Run(name, func(t *testing.T) {
			seen := map[string]bool{}
			for _, o := range objs {
				if o["apiVersion"] == nil || o["kind"] == nil || get(o, "metadata", "name") == nil {
					t.Errorf("object without apiVersion, kind or name: %v", o)
				}
				if seen[key(o)] {
					t.Errorf("%s twice", key(o))
				}
				seen[key(o)] = true
				if l, _ := get(o, "metadata", "labels", "app.kubernetes.io/part-of").(string); l != "meshplane" {
					t.Errorf("%s lacks the label app.kubernetes.io/part-of=meshplane", key(o))
				}
				// Uninstalling but the CRDs selects app.kubernetes.io/component!=crd.
				if c, _ := get(o, "metadata", "labels", "app.kubernetes.io/component").(string); (c == "crd") != (o["kind"] == "CustomResourceDefinition") {
					t.Errorf("%s: label app.kubernetes.io/component=%q", key(o), c)
				}
			}
		})
	}
}

// TestChartMatchesOverlays renders the chart with each overlay's values
// file and the overlay, and compares them object by object: the chart and
// the kustomize tree cannot drift apart. The config files are compared as
// YAML values, not text; the chart's one addition is the config hash on
// the pod templates (a changed config rolls the pods).
func TestChartMatchesOverlays(t *testing.T) {
	for name, dir := range overlays {
		t.Run(name, func(t *testing.T) {
			k := byKey(t, kustomize(t, dir))
			h := byKey(t, mustHelm(t, []string{"ci/" + name + "-values.yaml"}, nil))
			for id, ko := range k {
				ho, ok := h[id]
				if !ok {
					t.Errorf("%s: in the overlay, not in the chart", id)
					continue
				}
				if d := cmp.Diff(normalize(t, ko), normalize(t, ho)); d != "" {
					t.Errorf("%s differs (-overlay +chart):\n%s", id, d)
				}
			}
			for id := range h {
				if _, ok := k[id]; !ok {
					t.Errorf("%s: in the chart, not in the overlay", id)
				}
			}
		})
	}
}

func byKey(t *testing.T, objs []obj) map[string]obj {
	t.Helper()
	m := make(map[string]obj, len(objs))
	for _, o := range objs {
		m[key(o)] = o
	}
	return m
}

// normalize makes o comparable: config files decoded, comments gone; the
// chart's config-hash annotation dropped.
func normalize(t *testing.T, o obj) obj {
	o = deepCopy(o)
	if o["kind"] == "ConfigMap" {
		k, file := configFile(t, o)
		o["data"] = obj{k: file}
	}
	// Volumes and mounts in name order: kustomize's patches put theirs
	// first, the chart's templates last.
	if spec, ok := get(o, "spec", "template", "spec").(obj); ok {
		sortBy(spec, "volumes", "name")
		for _, list := range []string{"containers", "initContainers"} {
			cs, _ := spec[list].([]any)
			for _, c := range cs {
				sortBy(c.(obj), "volumeMounts", "mountPath")
			}
		}
	}
	if ann, ok := get(o, "spec", "template", "metadata", "annotations").(obj); ok {
		delete(ann, "meshplane.io/config-hash")
		if len(ann) == 0 {
			delete(get(o, "spec", "template", "metadata").(obj), "annotations")
		}
	}
	return o
}

// sortBy sorts the list m[list] of objects by their field.
func sortBy(m obj, list, field string) {
	l, _ := m[list].([]any)
	slices.SortStableFunc(l, func(a, b any) int {
		return strings.Compare(fmt.Sprint(a.(obj)[field]), fmt.Sprint(b.(obj)[field]))
	})
}

// TestChartCRDs: the chart's CRDs are deploy/crds' (what controller-gen
// wrote), with the part-of label, and kept on helm uninstall unless
// crds.keep=false.
func TestChartCRDs(t *testing.T) {
	names, err := crdFiles()
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []bool{true, false} {
		objs := mustHelm(t, nil, obj{"etcd": defaultValues["etcd"], "crds": obj{"keep": keep}})
		var got []obj
		for _, o := range objs {
			if o["kind"] == "CustomResourceDefinition" {
				got = append(got, o)
			}
		}
		if len(got) != len(names) {
			t.Fatalf("keep=%v: %d CRDs rendered, deploy/crds has %d", keep, len(got), len(names))
		}
		for _, o := range got {
			name := get(o, "metadata", "name").(string)
			b, err := crds.FS.ReadFile("meshplane.io_" + strings.SplitN(name, ".", 2)[0] + ".yaml")
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var want obj
			if err := yaml.Unmarshal(bytes.TrimPrefix(b, []byte("---\n")), &want); err != nil {
				t.Fatal(err)
			}
			o = deepCopy(o)
			md := o["metadata"].(obj)
			if a, _ := get(md, "annotations", "helm.sh/resource-policy").(string); (a == "keep") != keep {
				t.Errorf("keep=%v: %s resource-policy %q", keep, name, a)
			}
			delete(md, "annotations")
			delete(md["labels"].(obj), "app.kubernetes.io/part-of")
			delete(md["labels"].(obj), "app.kubernetes.io/component")
			if len(md["labels"].(obj)) == 0 {
				delete(md, "labels")
			}
			if wmd := want["metadata"].(obj); wmd["annotations"] != nil {
				md["annotations"] = wmd["annotations"] // controller-gen's own
			}
			if d := cmp.Diff(want, o); d != "" {
				t.Errorf("%s is not deploy/crds' (-deploy/crds +chart):\n%s", name, d)
			}
		}
	}
	if objs := mustHelm(t, nil, obj{"etcd": defaultValues["etcd"], "crds": obj{"install": false}}); slices.ContainsFunc(objs, func(o obj) bool { return o["kind"] == "CustomResourceDefinition" }) {
		t.Error("crds.install=false renders CRDs")
	}
}

func crdFiles() ([]string, error) {
	return filepath.Glob("crds/meshplane.io_*.yaml")
}

// TestEmptyEtcdEndpoints: the chart refuses to render without etcd
// endpoints, or with an empty one; every overlay names at least one; and
// the base, which names none, would not start (both loaders refuse it).
func TestEmptyEtcdEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  obj
	}{
		{"defaults", nil},
		{"empty list", obj{"etcd": obj{"endpoints": []any{}}}},
		{"empty entry", obj{"etcd": obj{"endpoints": []any{""}}}},
		{"empty list with a pool", obj{"etcd": obj{"endpoints": []any{}}, "ipamPool": obj{"enabled": true, "ipv4": "10.192.0.0/16"}}},
	} {
		_, err := helm(nil, tc.set)
		if err == nil || !strings.Contains(err.Error(), "etcd.endpoints") {
			t.Errorf("%s: helm template = %v, want an error naming etcd.endpoints", tc.name, err)
		}
	}
	for name, dir := range overlays {
		if name == "cleanup" {
			continue // no daemon, no config
		}
		for _, cm := range []string{"mesh-agent-config", "mesh-controlplane-config"} {
			_, file := configFile(t, find(t, kustomize(t, dir), "ConfigMap", cm))
			eps, _ := file["etcd-endpoints"].([]any)
			if len(eps) == 0 || slices.Contains(eps, any("")) {
				t.Errorf("%s %s: etcd-endpoints %v", name, cm, file["etcd-endpoints"])
			}
		}
	}
	base := kustomize(t, "kustomize/base")
	dir := t.TempDir()
	t.Setenv("MESHPLANE_NODE_NAME", "node-1")
	t.Setenv("MESHPLANE_NODE_IP", "192.0.2.1")
	_, agentFile := configFile(t, find(t, base, "ConfigMap", "mesh-agent-config"))
	agentFile["gossip-key-file"] = gossipKeyFile(t, dir)
	if _, _, err := agentcmd.Load([]string{"--config", writeYAML(t, dir, "agent.yaml", agentFile)}, io.Discard); err == nil || !strings.Contains(err.Error(), "etcd-endpoints") {
		t.Errorf("the base's agent config loads (%v): want an error naming --etcd-endpoints", err)
	}
	_, cpFile := configFile(t, find(t, base, "ConfigMap", "mesh-controlplane-config"))
	if _, err := cpcmd.Load([]string{"--config", writeYAML(t, dir, "cp.yaml", cpFile)}, io.Discard); err == nil || !strings.Contains(err.Error(), "etcd-endpoints") {
		t.Errorf("the base's control plane config loads (%v): want an error naming --etcd-endpoints", err)
	}
}

// TestChartValuesSchema: a misspelt or mistyped value fails the render
// (values.schema.json) instead of being ignored.
func TestChartValuesSchema(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  obj
		want string
	}{
		{"misspelt key", obj{"etcd": obj{"endpoints": []any{"https://e:2379"}, "endpoint": "https://e:2379"}}, "endpoint"},
		{"cluster ID out of range", obj{"etcd": defaultValues["etcd"], "cluster": obj{"id": 300}}, "id"},
		{"relative host path", obj{"etcd": defaultValues["etcd"], "hostPaths": obj{"run": "run"}}, "run"},
	} {
		_, err := helm(nil, tc.set)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: helm template = %v, want a schema error naming %s", tc.name, err, tc.want)
		}
	}
}

func gossipKeyFile(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "gossip-keys")
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	if err := os.WriteFile(p, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
