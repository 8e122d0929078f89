package cpbench_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/bench/cpbench"
	"github.com/meshplane/meshplane/bpf/bpftest"
	"github.com/meshplane/meshplane/kubetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// requireAPIServer skips without the kube-apiserver binary, unless
// MESHPLANE_REQUIRE_KUBE is set.
func requireAPIServer(t *testing.T) {
	t.Helper()
	if _, err := kubetest.Find(); err != nil {
		if os.Getenv("MESHPLANE_REQUIRE_KUBE") != "" {
			t.Fatalf("%v (MESHPLANE_REQUIRE_KUBE is set)", err)
		}
		t.Skip(err)
	}
}

// TestRunTiny runs the whole benchmark small, with the agent: every figure
// it reports is there and plausible.
func TestRunTiny(t *testing.T) {
	requireAPIServer(t)
	bpftest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress []string
	rep, err := cpbench.Run(ctx, cpbench.Config{
		Pods: 50, Namespaces: 3, Services: 5, Nodes: 2, Clients: 8, Relabels: 5, Agent: true,
		Progress: func(s string) { progress = append(progress, s) },
	})
	if err != nil {
		t.Fatalf("Run() = %v\nprogress: %s", err, strings.Join(progress, "\n"))
	}
	t.Logf("%+v", rep)
	if rep.Pods != 50 || rep.Namespaces != 3 || rep.Services != 5 || rep.Relabels != 5 {
		t.Errorf("counts: %+v", rep)
	}
	if rep.LagP50MS <= 0 || rep.LagP99MS < rep.LagP50MS || rep.CreateS <= 0 || rep.EventsPerS <= 0 {
		t.Errorf("lags and rates: %+v", rep)
	}
	// One watch per kind: namespaces, pods, services, endpointslices,
	// networkpolicies, nodes.
	if rep.APIServerWatches != 7 {
		t.Errorf("apiserver_watches = %d (%s), want 7, one per kind (MeshNetworkPolicies included)", rep.APIServerWatches, rep.APIServerWatchedBy)
	}
	if rep.RelabelTo != cpbench.RelabelToDatapath || rep.RelabelP50MS <= 0 || rep.RelabelEtcdP50MS <= 0 {
		t.Errorf("relabel: %+v", rep)
	}
	if rep.InitialSyncS <= 0 {
		t.Errorf("initial_sync_s = %v", rep.InitialSyncS)
	}
}

// TestRunWithoutAgent times relabels to etcd and says so.
func TestRunWithoutAgent(t *testing.T) {
	requireAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := cpbench.Run(ctx, cpbench.Config{Pods: 10, Relabels: 2})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RelabelTo != cpbench.RelabelToEtcd || rep.RelabelP99MS != rep.RelabelEtcdP99MS || rep.Pods != 10 {
		t.Errorf("report: %+v", rep)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []cpbench.Config{
		{Pods: 0}, {Pods: cpbench.MaxPods + 1}, {Pods: 10, Namespaces: -1}, {Pods: 10, Clients: cpbench.MaxClients + 1},
		{Pods: 10, Services: cpbench.MaxServices + 1}, {Pods: 10, Timeout: -time.Second},
	} {
		if _, err := cpbench.Run(context.Background(), cfg); !errors.Is(err, cpbench.ErrConfig) {
			t.Errorf("Run(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}
