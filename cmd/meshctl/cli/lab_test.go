package cli

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshplane/meshplane/lab"
)

func TestLabCommandErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: x\nclusters: [{name: c1, id: 300, podCIDR: 10.0.0.0/16, nodes: [{name: n1}]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rd := "--run-dir=" + dir
	tests := []struct {
		name string
		args []string
		want string // "" = no error
	}{
		{"up without file", []string{"lab", "up", rd}, "-f"},
		{"up bad file", []string{"lab", "up", rd, "-f", bad}, "clusters[0].id: 300"},
		{"up missing file", []string{"lab", "up", rd, "-f", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"up bad output", []string{"lab", "up", rd, "-f", bad, "-o", "xml"}, "unknown output format"},
		{"down without name", []string{"lab", "down", rd}, "name the lab"},
		{"down bad name", []string{"lab", "down", rd, "Bad_Name"}, "lab name"},
		{"down absent lab", []string{"lab", "down", rd, "absent"}, ""},
		{"show without labs", []string{"lab", "show", rd}, "no lab is running"},
		{"show unknown lab", []string{"lab", "show", rd, "absent"}, "not found"},
		{"probe without target", []string{"lab", "probe", rd, "--from", "a"}, "give --from and --to"},
		{"probe bad expect", []string{"lab", "probe", rd, "--from", "a", "--to", "b", "--expect", "maybe"}, "--expect"},
		{"probe bad port", []string{"lab", "probe", rd, "--from", "a", "--to", "b", "--port", "70000"}, "--port"},
		{"exec without command", []string{"lab", "exec", rd, "pod"}, "usage"},
		{"nsexec without netns", []string{"lab", "nsexec", "--", "true"}, "usage"},
		{"echo without name", []string{"lab", "echo", "--tcp", "80"}, "needs a name"},
		{"echo bad port", []string{"lab", "echo", "--name", "x", "--tcp", "70000"}, "1-65535"},
		{"etcd without socket", []string{"lab", "etcd", "--dir", dir}, "needs a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, err := meshctl(t, tt.args...)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("%v (stderr: %s)", err, stderr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}

// TestLabCLI runs a small lab through the commands a person types.
func TestLabCLI(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("MESHPLANE_REQUIRE_BPF") != "" {
			t.Fatal("MESHPLANE_REQUIRE_BPF is set, but a lab needs root")
		}
		t.Skip("a lab needs root (network namespaces, eBPF)")
	}
	bin := os.Getenv("MESHPLANE_LAB_BIN")
	if bin == "" {
		bin = t.TempDir()
		cmd := exec.Command("go", "build", "-o", bin+"/",
			"github.com/meshplane/meshplane/cmd/meshctl", "github.com/meshplane/meshplane/cmd/mesh-agent")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "c" + hex.EncodeToString(b[:])
	dir := t.TempDir()
	file := filepath.Join(dir, "lab.yaml")
	topo := fmt.Sprintf(`
name: %s
clusters:
  - name: c1
    id: 5
    podCIDR: 10.212.0.0/16
    namespaces: [{name: prod}]
    nodes:
      - name: n1
        pods:
          - {name: client, namespace: prod}
          - {name: web, namespace: prod, labels: {app: web}, ports: [{port: 80}]}
    services:
      - {name: web, namespace: prod, clusterIP: 10.96.0.20, selector: {app: web}, ports: [{port: 80}]}
`, name)
	if err := os.WriteFile(file, []byte(topo), 0o644); err != nil {
		t.Fatal(err)
	}
	rd := "--run-dir=" + filepath.Join(dir, "run")
	t.Cleanup(func() {
		if _, stderr, err := meshctl(t, "lab", "down", rd, "-f", file); err != nil {
			t.Errorf("lab down: %v (%s)", err, stderr)
		}
	})
	out := mustRun(t, "lab", "up", rd, "-f", file, "--meshctl", filepath.Join(bin, "meshctl"), "--agent", filepath.Join(bin, "mesh-agent"))
	for _, want := range []string{"prod/client", "prod/web", "10.96.0.20", "80->80/TCP", "c1/prod/web"} {
		if !strings.Contains(out, want) {
			t.Errorf("lab up printed no %q:\n%s", want, out)
		}
	}
	var shown struct {
		Pods []lab.Pod `json:"pods"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "lab", "show", rd, "-o", "json")), &shown); err != nil || len(shown.Pods) != 2 {
		t.Fatalf("lab show -o json: %+v, %v", shown, err)
	}
	out = mustRun(t, "lab", "probe", rd, "--from", "client", "--to", "pod:web", "--expect", "allowed")
	if !strings.HasPrefix(out, "allowed") || !strings.Contains(out, "answered by c1/prod/web") {
		t.Fatalf("lab probe printed %q", out)
	}
	var res lab.ProbeResult
	out = mustRun(t, "lab", "probe", rd, "--lab", name, "--from", "client", "--to", "web", "--port", "81", "-o", "json")
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Allowed || res.Reason == "" {
		t.Fatalf("probe to a closed port: %s (%v)", out, err)
	}
	if _, _, err := meshctl(t, "lab", "probe", rd, "--from", "client", "--to", "pod:web", "--port", "81", "--expect", "allowed"); err == nil {
		t.Fatal("--expect allowed of a refused probe succeeded")
	}
	out = mustRun(t, "lab", "exec", rd, "prod/client", "--", "cat", "/proc/net/fib_trie")
	if !strings.Contains(out, shown.Pods[0].IP.String()) {
		t.Fatalf("lab exec did not run in the pod: %s", out)
	}
	mustRun(t, "lab", "down", rd, name)
	if _, _, err := meshctl(t, "lab", "show", rd, name); err == nil {
		t.Fatal("lab show found the lab after down")
	}
}
