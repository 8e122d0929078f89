package cli

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/meshplane/meshplane/kubetest"
)

func TestBenchControlPlaneFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no pods", []string{"--pods", "0"}, "use 1 to 100000"},
		{"too many clients", []string{"--clients", "1000"}, "use 1 to 256"},
		{"bad output", []string{"-o", "xml"}, "unknown output format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"bench", "controlplane", "--no-agent"}, tt.args...)
			_, _, err := meshctl(t, args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}

// TestBenchControlPlane runs the bench tiny, with the agent, so that it
// keeps working; the figures are not checked beyond being there.
func TestBenchControlPlane(t *testing.T) {
	if _, err := kubetest.Find(); err != nil {
		if os.Getenv("MESHPLANE_REQUIRE_KUBE") != "" {
			t.Fatalf("%v (MESHPLANE_REQUIRE_KUBE is set)", err)
		}
		t.Skip(err)
	}
	args := []string{"bench", "controlplane", "--pods", "50", "--relabels", "3", "-o", "json"}
	if os.Geteuid() != 0 {
		if os.Getenv("MESHPLANE_REQUIRE_BPF") != "" {
			t.Fatal("MESHPLANE_REQUIRE_BPF is set, but the agent needs root")
		}
		args = append(args, "--no-agent")
	}
	out := mustRun(t, args...)
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench controlplane printed %q: %v", out, err)
	}
	for _, k := range []string{"lag_p50_ms", "lag_p99_ms", "events_per_s", "apiserver_watches", "relabel_p99_ms", "pods", "initial_sync_s"} {
		if v, ok := rep[k].(float64); !ok || v <= 0 {
			t.Errorf("%s = %v, want a positive number: %s", k, rep[k], out)
		}
	}
}
