package cnibench_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bench/cnibench"
	"github.com/meshplane/meshplane/bpf/bpftest"
	"github.com/meshplane/meshplane/netnstest"
)

func TestValidate(t *testing.T) {
	for _, c := range []cnibench.Config{
		{Pods: 0, Plugin: "x"},
		{Pods: cnibench.MaxPods + 1, Plugin: "x"},
		{Pods: 1, Parallel: cnibench.MaxParallel + 1, Plugin: "x"},
		{Pods: 1},
		{Pods: 1, Plugin: "x", Datapath: "iptables"},
		{Pods: 1, Plugin: "x", Timeout: -time.Second},
	} {
		if err := c.Validate(); !errors.Is(err, cnibench.ErrConfig) {
			t.Errorf("Validate(%+v) = %v, want ErrConfig", c, err)
		}
	}
}

// TestRunRefusesHostNetns: in a namespace with interfaces (this test's),
// Run creates nothing and says why.
func TestRunRefusesHostNetns(t *testing.T) {
	_, err := cnibench.Run(context.Background(), cnibench.Config{Pods: 1, Plugin: "/nonexistent/mesh-cni"})
	if !errors.Is(err, cnibench.ErrHostNetns) {
		t.Skipf("this test's namespace looks fresh (%v): nothing to check", err)
	}
}

// TestBenchCNI runs `meshctl bench cni` for a few pods, as `make bench`
// does, and checks the report's figures.
func TestBenchCNI(t *testing.T) {
	netnstest.Require(t)
	bpftest.Require(t)
	dir := t.TempDir()
	for _, c := range []string{"meshctl", "mesh-cni"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, c), "github.com/meshplane/meshplane/cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", c, err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "meshctl"), "bench", "cni", "--pods", "3", "--parallel", "2", "-o", "json")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("meshctl bench cni: %v\n%s", err, out)
	}
	var rep cnibench.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report %s: %v", out, err)
	}
	if rep.Pods != 3 || rep.Datapath != "ebpf" || rep.AddP50MS <= 0 || rep.AddP99MS < rep.AddP50MS || rep.DelP99MS <= 0 || rep.PodsPerS <= 0 || rep.KnownAddP99MS <= 0 {
		t.Fatalf("report = %+v", rep)
	}
	// The run's namespaces are gone.
	left, _ := filepath.Glob("/run/netns/mp-cnibench-*")
	for _, l := range left {
		t.Errorf("namespace left: %s", l)
	}
}
