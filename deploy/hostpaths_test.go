package deploy_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestKustomizePrivateHostPaths writes, in a temporary directory, the
// overlay a test harness (kubenode) would write to point a node's
// directories elsewhere, builds it, and checks that it renders what the
// chart renders with the same hostPaths values: the recipe in
// deploy/README.md works, and both ways agree.
func TestKustomizePrivateHostPaths(t *testing.T) {
	root := "/tmp/mp-test"
	single, err := filepath.Abs(overlays["single"])
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// kustomize takes no absolute paths: the overlay relative to dir.
	rel, err := filepath.Rel(dir, single)
	if err != nil {
		t.Fatal(err)
	}
	kust := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ` + rel + `
patches:
  - target: {kind: DaemonSet, name: mesh-agent}
    patch: |-
      - op: replace
        path: /spec/template/spec/initContainers/0/command/7
        value: ` + root + `/run/agent.sock
  - target: {kind: DaemonSet, name: mesh-agent}
    patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata:
        name: mesh-agent
      spec:
        template:
          spec:
            volumes:
              - {name: bpffs, hostPath: {path: /sys/fs/bpf/mp-test}}
              - {name: run, hostPath: {path: ` + root + `/run}}
              - {name: state, hostPath: {path: ` + root + `/state}}
              - {name: cni-bin, hostPath: {path: ` + root + `/cni/bin}}
              - {name: cni-conf, hostPath: {path: ` + root + `/cni/net.d}}
`
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kust), 0o600); err != nil {
		t.Fatal(err)
	}
	got := find(t, kustomize(t, dir), "DaemonSet", "mesh-agent")
	want := find(t, mustHelm(t, []string{"ci/single-values.yaml"}, obj{"hostPaths": obj{
		"bpffs": "/sys/fs/bpf/mp-test", "run": root + "/run", "state": root + "/state",
		"cniBin": root + "/cni/bin", "cniConf": root + "/cni/net.d",
	}}), "DaemonSet", "mesh-agent")
	if d := cmp.Diff(normalize(t, got), normalize(t, want)); d != "" {
		t.Errorf("the patched overlay's agent differs from the chart's with the same hostPaths (-overlay +chart):\n%s", d)
	}
	if s := flagValue(toStrings(container(t, got, "install-cni")["command"]), "--socket"); s != root+"/run/agent.sock" {
		t.Errorf("install-cni --socket %q", s)
	}
}
