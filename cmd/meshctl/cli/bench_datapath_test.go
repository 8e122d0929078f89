package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestBenchDatapathFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad case", []string{"--cases", "10"}, "RULES/SERVICES"},
		{"no services", []string{"--cases", "0/0"}, "1-30000 services"},
		{"too many rules", []string{"--cases", "1000000/1"}, "0-100000 rules"},
		{"bad enforcer", []string{"--enforcers", "nft"}, "ebpf and/or iptables"},
		{"enforcer twice", []string{"--enforcers", "ebpf,ebpf"}, "each once"},
		{"bad routing", []string{"--routing", "bgp"}, "native and/or tunnel"},
		{"too many workers", []string{"--workers", "100"}, "1-64"},
		{"too many rounds", []string{"--rounds", "21"}, "1-20"},
		{"long duration", []string{"--duration", "2m"}, "up to 1m0s"},
		{"bad output", []string{"-o", "xml"}, "unknown output format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"bench", "datapath", "--run-dir", t.TempDir()}, tt.args...)
			_, _, err := meshctl(t, args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}

// TestBenchDatapath runs the bench small (three labs, three cases, short
// measurements), so that it keeps working; the figures are not checked
// beyond being there. It is not parallel: it keeps the CPUs busy.
func TestBenchDatapath(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("MESHPLANE_REQUIRE_BPF") != "" {
			t.Fatal("MESHPLANE_REQUIRE_BPF is set, but the bench needs root")
		}
		t.Skip("the bench builds labs: it needs root (network namespaces, eBPF)")
	}
	enforcers := "ebpf,iptables"
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Logf("no iptables-restore (apt-get install iptables): measuring ebpf only")
		enforcers = "ebpf"
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
	out := mustRun(t, "bench", "datapath", "--run-dir", filepath.Join(t.TempDir(), "run"),
		"--meshctl", filepath.Join(bin, "meshctl"), "--agent", filepath.Join(bin, "mesh-agent"),
		"--enforcers", enforcers, "--cases", "0/1,100/1,0/100",
		"--duration", "300ms", "--warmup", "100ms", "--rr-count", "500", "--applies", "5", "-o", "json")
	var rep struct {
		Rows []map[string]any `json:"rows"`
		P50  float64          `json:"policy_apply_p50_ms"`
		P99  float64          `json:"policy_apply_p99_ms"`
		N    int              `json:"policy_applies"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench datapath printed %q: %v", out, err)
	}
	// ebpf runs in both routing modes, iptables in native routing.
	if want := 3 * (len(strings.Split(enforcers, ",")) + 1); len(rep.Rows) != want {
		t.Fatalf("%d rows, want %d: %s", len(rep.Rows), want, out)
	}
	for _, r := range rep.Rows {
		for _, f := range []string{"enforcer", "routing", "rules", "services", "conn_per_s", "rr_p50_us", "rr_p99_us"} {
			if _, ok := r[f]; !ok {
				t.Errorf("row %v has no %s", r, f)
			}
		}
		if r["routing"] == "tunnel" {
			for _, f := range []string{"conn_per_s_vs_native_ratio", "rr_p50_vs_native_ratio", "rr_p99_vs_native_ratio"} {
				if v, _ := r[f].(float64); v <= 0 {
					t.Errorf("tunnel row %v: no %s", r, f)
				}
			}
		}
		if c, _ := r["conn_per_s"].(float64); c <= 0 {
			t.Errorf("row %v: no connections", r)
		}
		if p50, _ := r["rr_p50_us"].(float64); p50 <= 0 || p50 > r["rr_p99_us"].(float64) {
			t.Errorf("row %v: latencies out of order", r)
		}
	}
	if rep.N != 5 || rep.P50 <= 0 || rep.P99 < rep.P50 {
		t.Errorf("policy applies: %d, p50 %v ms, p99 %v ms", rep.N, rep.P50, rep.P99)
	}
}
