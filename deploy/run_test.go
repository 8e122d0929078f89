package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/cmd/mesh-agent/agentcmd"
	"github.com/meshplane/meshplane/cmd/meshctl/cli"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// syncBuffer is an io.Writer the agent's goroutine and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// meshctl runs the real CLI with args and returns its stdout.
func meshctl(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := cli.New(&stdout, &stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err != nil {
		err = fmt.Errorf("meshctl %s: %w (stderr: %s)", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), err
}

// TestMeshOverlaysRun runs what each mesh overlay renders, with the real
// binaries' code against a real etcd (the test binary's): the pool Job's
// meshctl command, twice (it may run again); then mesh-agent with the
// rendered config file (no default pool), until the agent's readiness
// probe command says ok; its pod CIDR must come from the overlay's pool.
// Then the cleanup overlay's command removes what the agent left. Only the
// paths and the etcd are the test's: the etcd endpoint (plain, no TLS),
// a cluster name of its own, private directories and ports.
func TestMeshOverlaysRun(t *testing.T) {
	kube.Require(t)
	for _, name := range []string{"cluster-a", "cluster-b"} {
		t.Run(name, func(t *testing.T) { runOverlay(t, name) })
	}
}

func runOverlay(t *testing.T, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	objs := kustomize(t, overlays[name])
	cluster := etcdtest.Cluster(t)
	endpoint := kube.Etcd.Endpoint()
	dir := t.TempDir()

	// The pool Job, its args as rendered but for the etcd and cluster.
	jobArgs := toStrings(container(t, find(t, objs, "Job", "meshplane-ipam-pool"), "meshctl")["args"])
	var args []string
	var pool netip.Prefix
	for _, a := range jobArgs {
		switch {
		case strings.HasPrefix(a, "--etcd-ca="), strings.HasPrefix(a, "--etcd-cert="), strings.HasPrefix(a, "--etcd-key="):
			continue
		case strings.HasPrefix(a, "--etcd-endpoints="):
			a = "--etcd-endpoints=" + endpoint
		case strings.HasPrefix(a, "--cluster-name="):
			a = "--cluster-name=" + cluster
		case strings.HasPrefix(a, "--ipv4="):
			pool = netip.MustParsePrefix(strings.TrimPrefix(a, "--ipv4="))
		}
		args = append(args, a)
	}
	for run := range 2 {
		if _, err := meshctl(ctx, args...); err != nil {
			t.Fatalf("the pool Job, run %d: %v", run+1, err)
		}
	}

	// The agent, with the rendered config file.
	_, file := configFile(t, find(t, objs, "ConfigMap", "mesh-agent-config"))
	if file["no-default-pool"] != true {
		t.Fatalf("%s's agents would create the default pool: %v", name, file)
	}
	node := fmt.Sprintf("deploy-%d-%s", os.Getpid()%100000, name)
	socket := filepath.Join(dir, "agent.sock")
	delete(file, "etcd-ca")
	delete(file, "etcd-cert")
	delete(file, "etcd-key")
	file["etcd-endpoints"] = []any{endpoint}
	file["cluster-name"] = cluster
	file["gossip-key-file"] = gossipKeyFile(t, dir)
	file["api-socket"] = socket
	file["state-dir"] = filepath.Join(dir, "state")
	file["metrics-address"] = ""
	file["gossip-address"] = "127.0.0.1"
	file["gossip-port"] = freePort(t)
	t.Setenv("MESHPLANE_NODE_NAME", node)
	t.Setenv("MESHPLANE_NODE_IP", "127.0.0.1")
	pins := bpf.Config{Node: node}
	t.Cleanup(func() { _ = bpf.RemovePins(pins) })
	config := writeYAML(t, dir, "agent.yaml", file)

	agentCtx, stop := context.WithCancel(ctx)
	var logs syncBuffer
	done := make(chan int, 1)
	go func() { done <- agentcmd.Main(agentCtx, []string{"--config", config}, &logs) }()
	stopped := false
	stopAgent := func() {
		if stopped {
			return
		}
		stopped = true
		stop()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("mesh-agent exited %d:\n%s", code, logs.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("mesh-agent did not stop within 30s")
		}
	}
	defer stopAgent()

	// The readiness probe's command, on the test's socket.
	probe := toStrings(get(container(t, find(t, objs, "DaemonSet", "mesh-agent"), "mesh-agent"), "readinessProbe", "exec", "command"))
	probeArgs := append([]string(nil), probe[1:]...)
	for i := 1; i < len(probeArgs); i++ {
		switch probeArgs[i-1] {
		case "--agent-socket":
			probeArgs[i] = socket
		case "--timeout":
			probeArgs[i] = "60s" // a first start may take longer than one probe
		}
	}
	if _, err := meshctl(ctx, probeArgs...); err != nil {
		t.Fatalf("the readiness probe: %v\nagent:\n%s", err, logs.String())
	}
	out, err := meshctl(ctx, "status", "--agent-socket", socket, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		IPAM struct {
			PodCIDRs []string `json:"pod_cidrs"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.IPAM.PodCIDRs) == 0 {
		t.Fatalf("status: %v, %s", err, out)
	}
	for _, c := range st.IPAM.PodCIDRs {
		if p := netip.MustParsePrefix(c); !pool.Contains(p.Addr()) || p.Bits() != 24 {
			t.Errorf("pod CIDR %s is not a /24 of the overlay's pool %s", c, pool)
		}
	}
	if _, err := os.Stat(pins.PinDir()); err != nil {
		t.Fatalf("the agent pinned nothing: %v", err)
	}

	// Uninstall: the agent goes, then the cleanup DaemonSet's command.
	stopAgent()
	cleanup := toStrings(container(t, find(t, kustomize(t, overlays["cleanup"]), "DaemonSet", "mesh-cleanup"), "remove-pins")["command"])
	cleanArgs := append([]string(nil), cleanup[1:]...)
	for i := 1; i < len(cleanArgs); i++ {
		switch cleanArgs[i-1] {
		case "--state-dir":
			cleanArgs[i] = file["state-dir"].(string)
		case "--api-socket":
			cleanArgs[i] = socket
		}
	}
	var cleanLog bytes.Buffer
	if code := agentcmd.Main(ctx, cleanArgs, &cleanLog); code != 0 {
		t.Fatalf("mesh-agent %s: exit %d: %s", strings.Join(cleanArgs, " "), code, cleanLog.String())
	}
	for _, p := range []string{pins.PinDir(), socket, file["state-dir"].(string)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("after the cleanup, %s: %v", p, err)
		}
	}
}

// freePort returns a TCP and UDP port free on 127.0.0.1 (gossip uses both).
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			return port
		}
	}
	t.Fatal("no free port for gossip")
	return 0
}
