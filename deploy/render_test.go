package deploy_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// obj is one rendered Kubernetes object, as JSON would decode it.
type obj = map[string]any

// The overlays, by the name of the chart's values file that renders the
// same objects (helm/meshplane/ci/<name>-values.yaml).
var overlays = map[string]string{
	"single":    "kustomize/overlays/single",
	"cluster-a": "kustomize/overlays/mesh/cluster-a",
	"cluster-b": "kustomize/overlays/mesh/cluster-b",
	"cleanup":   "kustomize/overlays/cleanup",
}

const chartDir = "helm/meshplane"

// releaseNamespace is the namespace the chart is rendered into, the
// kustomize tree's.
const releaseNamespace = "meshplane"

// kustomize builds the kustomization in dir as kubectl apply -k does
// (files outside a kustomization's root are refused).
func kustomize(t *testing.T, dir string) []obj {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	b, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	objs, err := splitYAML(b)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return objs
}

// helm renders the chart as helm install would, with the values of the
// files (paths relative to the chart) and then set, which wins.
func helm(valuesFiles []string, set obj) ([]obj, error) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		return nil, fmt.Errorf("load chart: %w", err)
	}
	vals := obj{}
	for _, f := range valuesFiles {
		v, err := chartutil.ReadValuesFile(filepath.Join(chartDir, f))
		if err != nil {
			return nil, err
		}
		vals = chartutil.MergeTables(v.AsMap(), vals)
	}
	vals = chartutil.MergeTables(deepCopy(set), vals)
	rv, err := chartutil.ToRenderValues(chrt, vals,
		chartutil.ReleaseOptions{Name: "meshplane", Namespace: releaseNamespace, IsInstall: true, Revision: 1},
		chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	out, err := engine.Render(chrt, rv)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	sort.Strings(names)
	var objs []obj
	for _, n := range names {
		if !strings.HasSuffix(n, ".yaml") {
			continue // NOTES.txt, _helpers.tpl
		}
		o, err := splitYAML([]byte(out[n]))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n, err)
		}
		objs = append(objs, o...)
	}
	return objs, nil
}

func mustHelm(t *testing.T, valuesFiles []string, set obj) []obj {
	t.Helper()
	objs, err := helm(valuesFiles, set)
	if err != nil {
		t.Fatalf("helm template %v %v: %v", valuesFiles, set, err)
	}
	return objs
}

// splitYAML decodes a stream of YAML documents, skipping empty ones.
func splitYAML(b []byte) ([]obj, error) {
	var objs []obj
	for i, doc := range bytes.Split(append([]byte("\n"), b...), []byte("\n---")) {
		var o obj
		if err := yaml.Unmarshal(doc, &o); err != nil {
			return nil, fmt.Errorf("document %d: %w\n%s", i, err, doc)
		}
		if len(o) == 0 {
			continue
		}
		objs = append(objs, o)
	}
	return objs, nil
}

func deepCopy(o obj) obj {
	b, err := yaml.Marshal(o)
	if err != nil {
		panic(err)
	}
	var c obj
	if err := yaml.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return c
}

// key names an object: kind, namespace and name.
func key(o obj) string {
	md, _ := o["metadata"].(obj)
	ns, _ := md["namespace"].(string)
	name, _ := md["name"].(string)
	return fmt.Sprintf("%s %s/%s", o["kind"], ns, name)
}

// get walks o along path (map keys; a number for a list index).
func get(o any, path ...any) any {
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, ok := o.(obj)
			if !ok {
				return nil
			}
			o = m[p]
		case int:
			l, ok := o.([]any)
			if !ok || p >= len(l) {
				return nil
			}
			o = l[p]
		}
	}
	return o
}

// find returns the object of kind and name, failing the test without it.
func find(t *testing.T, objs []obj, kind, name string) obj {
	t.Helper()
	for _, o := range objs {
		if o["kind"] == kind && get(o, "metadata", "name") == name {
			return o
		}
	}
	t.Fatalf("no %s %s among the %d objects", kind, name, len(objs))
	return nil
}

// container returns the pod template's container (or init container) name.
func container(t *testing.T, workload obj, name string) obj {
	t.Helper()
	for _, list := range []string{"containers", "initContainers"} {
		cs, _ := get(workload, "spec", "template", "spec", list).([]any)
		for _, c := range cs {
			if c := c.(obj); c["name"] == name {
				return c
			}
		}
	}
	t.Fatalf("%s has no container %s", key(workload), name)
	return nil
}

// configFile returns the config file a ConfigMap carries (its one key),
// decoded.
func configFile(t *testing.T, cm obj) (string, obj) {
	t.Helper()
	data, _ := cm["data"].(obj)
	if len(data) != 1 {
		t.Fatalf("%s has %d keys, want one config file", key(cm), len(data))
	}
	for k, v := range data {
		var m obj
		if err := yaml.Unmarshal([]byte(v.(string)), &m); err != nil {
			t.Fatalf("%s %s: %v", key(cm), k, err)
		}
		return k, m
	}
	panic("unreachable")
}

func writeYAML(t *testing.T, dir, name string, v any) string {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
