package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/cni"
)

// requireLab skips a test that needs to build a lab (root, bpffs) where it
// cannot, with the reason; with MESHPLANE_REQUIRE_BPF set (CI) it fails
// instead, so the test cannot silently not run.
func requireLab(t *testing.T) {
	t.Helper()
	if err := checkHost(Options{BPFFS: DefaultBPFFS}); err != nil {
		if os.Getenv("MESHPLANE_REQUIRE_BPF") != "" {
			t.Fatalf("MESHPLANE_REQUIRE_BPF is set, but a lab cannot run here: %v", err)
		}
		t.Skipf("a lab needs root and a bpffs at %s: %v", DefaultBPFFS, err)
	}
}

// labBinaries builds meshctl and mesh-agent for the lab's processes, or
// takes them from the directory in MESHPLANE_LAB_BIN (bin/ after make
// build).
func labBinaries(t *testing.T) (meshctl, agent string) {
	t.Helper()
	if d := os.Getenv("MESHPLANE_LAB_BIN"); d != "" {
		return filepath.Join(d, "meshctl"), filepath.Join(d, "mesh-agent")
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/",
		"github.com/meshplane/meshplane/cmd/meshctl", "github.com/meshplane/meshplane/cmd/mesh-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "meshctl"), filepath.Join(dir, "mesh-agent")
}

// uniqueName is a lab name no other run uses.
func uniqueName(t *testing.T) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "t" + hex.EncodeToString(b[:])
}

const e2eTopology = `
name: %s
clusters:
  - name: c1
    id: 3
    podCIDR: 10.210.0.0/16
    namespaces:
      - {name: prod, labels: {env: prod}}
      - {name: dev}
    nodes:
      - name: n1
        pods:
          - {name: client, namespace: prod, labels: {app: client}}
          - {name: web-1, namespace: prod, labels: {app: web}, ports: [{name: http, port: 80}, {port: 53, protocol: UDP}]}
      - name: n2
        pods:
          - {name: web-2, namespace: prod, labels: {app: web}, ports: [{name: http, port: 80}, {port: 53, protocol: UDP}]}
          - {name: tool, namespace: dev, ports: [{port: 8080}]}
    services:
      - {name: web, namespace: prod, clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}, {port: 53, protocol: UDP}]}
externals:
  - {name: ext1, ip: 192.168.77.200, ports: [{port: 80}, {port: 53, protocol: UDP}]}
`

// labLeftovers is what a lab leaves on the machine: running processes,
// namespaces, the pin directory and the run directory.
type labLeftovers struct {
	pids  []int
	netns []string
	dirs  []string
}

func leftovers(t *testing.T, l *Lab) labLeftovers {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out labLeftovers
	for _, c := range l.st.Clusters {
		out.pids = append(out.pids, c.EtcdPID)
		for _, n := range c.Nodes {
			out.pids = append(out.pids, n.AgentPID)
		}
	}
	for _, p := range l.st.Pods {
		out.pids = append(out.pids, p.EchoPID)
	}
	ns, err := listLabNetns(l.st.Name)
	if err != nil {
		t.Fatal(err)
	}
	out.netns = ns
	out.dirs = []string{l.st.BPFFS, l.st.Dir}
	return out
}

func TestLab(t *testing.T) {
	requireLab(t)
	meshctl, agent := labBinaries(t)
	name := uniqueName(t)
	topo, err := ParseTopology(fmt.Appendf(nil, e2eTopology, name))
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	o := Options{RunDir: t.TempDir(), Meshctl: meshctl, Agent: agent, Stdout: &progress}
	// Down runs before the run dir's TempDir cleanup (cleanups are LIFO).
	t.Cleanup(func() {
		if err := Down(context.Background(), name, o); err != nil {
			t.Errorf("Down in cleanup: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Up(ctx, topo, o)
	if err != nil {
		t.Fatalf("Up: %v\nprogress:\n%s", err, progress.String())
	}
	if got := len(l.Pods()); got != 4 {
		t.Fatalf("%d pods, want 4", got)
	}
	for _, p := range l.Pods() {
		if !p.IP.IsValid() || p.Identity == 0 || !strings.HasPrefix(p.IP.String(), "10.210.") {
			t.Errorf("pod %s: IP %s, identity %d", p.Ref(), p.IP, p.Identity)
		}
	}
	web1, _ := l.Pod("web-1")
	web2, _ := l.Pod("prod/web-2")
	if web1.Identity != web2.Identity {
		t.Errorf("web-1 and web-2 have identities %d and %d; same labels should give one", web1.Identity, web2.Identity)
	}

	t.Run("probe", func(t *testing.T) {
		tests := []struct {
			from, to string
			port     uint16
			proto    string
			want     string // the pod that answers
		}{
			{"client", "web-1", 80, "tcp", "c1/prod/web-1"},        // same node
			{"client", "web-2", 80, "tcp", "c1/prod/web-2"},        // across nodes
			{"client", "web-2", 0, "udp", "c1/prod/web-2"},         // the only UDP port
			{"web-2", "c1/prod/web-1", 80, "tcp", "c1/prod/web-1"}, // the other way
			{"tool", "web-1", 53, "udp", "c1/prod/web-1"},          // another namespace
			{"client", web2.IP.String(), 80, "tcp", "c1/prod/web-2"},
			{"web-1", "dev/tool", 0, "tcp", "c1/dev/tool"},
			// Externals: pods reach them through their node, and they
			// reach pods through the pod's node.
			{"client", "ext:ext1", 80, "tcp", "ext:ext1"},
			{"web-2", "ext1", 0, "udp", "ext:ext1"},
			{"client", "192.168.77.200", 80, "tcp", "ext:ext1"},
			{"ext:ext1", "web-2", 80, "tcp", "c1/prod/web-2"},
			{"ext1", "c1/prod/web-1", 53, "udp", "c1/prod/web-1"},
		}
		for _, tt := range tests {
			t.Run(tt.from+"->"+tt.to+"/"+tt.proto, func(t *testing.T) {
				res, err := l.Probe(ctx, ProbeSpec{From: tt.from, To: tt.to, Port: tt.port, Proto: tt.proto, Timeout: 2 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				if !res.Allowed || res.Answered != tt.want {
					t.Fatalf("probe = %+v; want allowed, answered by %s (no policy)", res, tt.want)
				}
			})
		}
	})

	t.Run("refused", func(t *testing.T) {
		res, err := l.Probe(ctx, ProbeSpec{From: "client", To: "web-1", Port: 81})
		if err != nil {
			t.Fatal(err)
		}
		if res.Allowed || !strings.Contains(res.Error, "refused") || !strings.HasPrefix(res.Reason, NoFlowRecorded) {
			t.Fatalf("probe to a closed port = %+v; want not allowed, refused, no flow", res)
		}
	})

	t.Run("bad probes", func(t *testing.T) {
		for _, spec := range []ProbeSpec{
			{From: "nobody", To: "web-1", Port: 80},
			{From: "client", To: "nobody", Port: 80},
			{From: "web-1", To: "client"}, // no port given, and client has none
			{From: "client", To: "web-1", Port: 80, Proto: "sctp"},
			{From: "ext:nobody", To: "web-1", Port: 80},
			{From: "svc:prod/web", To: "web-1", Port: 80},
			{From: "ext1", To: "nobody", Port: 80},
		} {
			if _, err := l.Probe(ctx, spec); err == nil {
				t.Errorf("Probe(%+v) succeeded, want an error", spec)
			}
		}
	})

	t.Run("service", func(t *testing.T) {
		if !datapathAttached(t, l, "client") {
			t.Skip("no eBPF program on the host veths yet: ClusterIP translation needs the datapath")
		}
		answered := map[string]int{}
		for i := 0; i < 40 && len(answered) < 2; i++ {
			res, err := l.Probe(ctx, ProbeSpec{From: "client", To: "prod/web", Port: 80})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Allowed {
				t.Fatalf("probe to the service = %+v; want allowed", res)
			}
			answered[res.Answered]++
		}
		if len(answered) != 2 {
			t.Fatalf("40 probes to the service reached only %v; want both backends", answered)
		}
		res, err := l.Probe(ctx, ProbeSpec{From: "client", To: "svc:prod/web", Proto: "udp"})
		if err != nil || !res.Allowed {
			t.Fatalf("UDP probe to the service = %+v, %v", res, err)
		}
	})

	t.Run("exec", func(t *testing.T) {
		client, _ := l.Pod("client")
		var out, errOut bytes.Buffer
		// /proc/net is the reading process's namespace: the pod's address
		// there proves the command ran in the pod.
		if err := l.Exec(ctx, "client", []string{"cat", "/proc/net/fib_trie"}, &out, &errOut); err != nil {
			t.Fatalf("Exec: %v (%s)", err, errOut.String())
		}
		if !strings.Contains(out.String(), client.IP.String()) || strings.Contains(out.String(), "192.168.77.") {
			t.Fatalf("exec did not run in the pod's netns: fib_trie:\n%s", out.String())
		}
		if err := l.Exec(ctx, "client", []string{"false"}, &out, &errOut); err == nil {
			t.Fatal("Exec of false succeeded")
		}
	})

	t.Run("open", func(t *testing.T) {
		l2, err := Open(name, o)
		if err != nil {
			t.Fatal(err)
		}
		if len(l2.Pods()) != 4 || len(l2.EtcdEndpoints("c1")) != 1 {
			t.Fatalf("Open: %d pods, etcd %v", len(l2.Pods()), l2.EtcdEndpoints("c1"))
		}
		n, err := l2.Node("c1", "n2")
		if err != nil || !n.PodCIDR.IsValid() || n.PodCIDR == mustNode(t, l, "c1", "n1").PodCIDR {
			t.Fatalf("Node(c1, n2) = %+v, %v", n, err)
		}
	})

	t.Run("add and delete pod", func(t *testing.T) {
		p, err := l.AddPod(ctx, "c1", "n2", PodSpec{Name: "web-3", Namespace: "prod", Labels: map[string]string{"app": "web"}, Ports: []PortSpec{{Port: 80}}})
		if err != nil {
			t.Fatal(err)
		}
		if p.Identity != web1.Identity || !p.IP.IsValid() {
			t.Fatalf("web-3 = %+v; want an IP and web's identity %d", p, web1.Identity)
		}
		if got := l.Services()[0].Backends; len(got) != 3 {
			t.Fatalf("service backends %v; want web-3 added", got)
		}
		res, err := l.Probe(ctx, ProbeSpec{From: "client", To: "web-3", Port: 80})
		if err != nil || !res.Allowed || res.Answered != "c1/prod/web-3" {
			t.Fatalf("probe to the new pod = %+v, %v", res, err)
		}
		if _, err := l.AddPod(ctx, "c1", "n1", PodSpec{Name: "web-3", Namespace: "prod"}); !errors.Is(err, ErrExists) {
			t.Fatalf("AddPod of an existing pod: %v, want ErrExists", err)
		}
		if _, err := l.AddPod(ctx, "c1", "n1", PodSpec{Name: "x", Namespace: "nope"}); !errors.Is(err, ErrTopology) {
			t.Fatalf("AddPod in an unknown namespace: %v, want ErrTopology", err)
		}
		if err := l.DeletePod(ctx, "web-3"); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Pod("web-3"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Pod(web-3) after DeletePod: %v", err)
		}
		if _, err := os.Stat(p.Netns); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("netns %s still there after DeletePod (%v)", p.Netns, err)
		}
		if got := l.Services()[0].Backends; len(got) != 2 {
			t.Fatalf("service backends %v; want web-3 gone", got)
		}
	})

	t.Run("agent restart", func(t *testing.T) {
		l.mu.Lock()
		ns, _ := l.st.node("c1", "n2")
		pid := ns.AgentPID
		l.mu.Unlock()
		if err := l.StopAgent(ctx, "c1", "n2"); err != nil {
			t.Fatal(err)
		}
		if running(pid) {
			t.Fatalf("agent %d still runs after StopAgent", pid)
		}
		// The pods keep their addresses and routes without the agent.
		res, err := l.Probe(ctx, ProbeSpec{From: "client", To: "web-2", Port: 80})
		if err != nil || !res.Allowed {
			t.Fatalf("probe with n2's agent stopped = %+v, %v", res, err)
		}
		if err := l.StartAgent(ctx, "c1", "n2"); err != nil {
			t.Fatal(err)
		}
		res, err = l.Probe(ctx, ProbeSpec{From: "web-2", To: "web-1", Port: 80})
		if err != nil || !res.Allowed {
			t.Fatalf("probe after the restart = %+v, %v", res, err)
		}
	})

	t.Run("down", func(t *testing.T) {
		left := leftovers(t, l)
		if len(left.netns) != 8 {
			t.Fatalf("before Down: namespaces %v, want 8 (lab, 2 nodes, 4 pods, 1 external)", left.netns)
		}
		if err := Down(ctx, name, o); err != nil {
			t.Fatal(err)
		}
		for _, pid := range left.pids {
			if running(pid) {
				args, _ := procCmdline(pid)
				t.Errorf("process %d (%v) still runs after Down", pid, args)
			}
		}
		if ns, _ := listLabNetns(name); len(ns) != 0 {
			t.Errorf("namespaces %v left after Down", ns)
		}
		for _, d := range left.dirs {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left after Down (%v)", d, err)
			}
		}
		if err := Down(ctx, name, o); err != nil {
			t.Fatalf("second Down: %v", err)
		}
		if _, err := Open(name, o); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Open after Down: %v, want ErrNotFound", err)
		}
	})
}

func mustNode(t *testing.T, l *Lab, cluster, name string) Node {
	t.Helper()
	n, err := l.Node(cluster, name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// datapathAttached reports whether the eBPF programs are attached to the
// host side of a pod's veth: a cls_bpf filter named
// meshplane/<node>/from-pod on its ingress (the agent's default tc mode),
// or, in tcx mode, the link the agent pins as links/<ifindex>-from-pod
// beside its maps. (bpftool net of Debian bookworm, 7.1, does not list
// tcx links.)
func datapathAttached(t *testing.T, l *Lab, pod string) bool {
	t.Helper()
	l.mu.Lock()
	ps, err := l.st.findPod(pod)
	var nodeNs, veth string
	if err == nil {
		n, _ := l.st.node(ps.Cluster, ps.Node)
		nodeNs, veth = n.Netns, ps.HostVeth
	}
	l.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var (
		ifindex int
		tc      bool
	)
	if err := cni.InNetns(nodeNs, func() error {
		ifi, err := net.InterfaceByName(veth)
		if err != nil {
			return err
		}
		ifindex = ifi.Index
		fs, err := netlink.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return nil // no clsact qdisc
		}
		for _, f := range fs {
			if b, ok := f.(*netlink.BpfFilter); ok && b.Name == "meshplane/"+ps.Node+"/from-pod" {
				tc = true
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if tc {
		return true
	}
	link := filepath.Join(l.BPFFS(ps.Cluster), "meshplane", ps.Node, "links", fmt.Sprintf("%d-from-pod", ifindex))
	_, err = os.Stat(link)
	return err == nil
}

func TestUpRefusesBadInput(t *testing.T) {
	requireLab(t)
	topo, err := ParseTopology(fmt.Appendf(nil, e2eTopology, uniqueName(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	// Binaries that are not there: nothing may be created.
	_, err = Up(ctx, topo, Options{RunDir: dir, Meshctl: "/nonexistent/meshctl", Agent: "/nonexistent/mesh-agent"})
	if err == nil || !strings.Contains(err.Error(), "not an executable") {
		t.Fatalf("Up with missing binaries: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("Up left %v in the run dir after refusing", entries)
	}
	if ns, _ := listLabNetns(topo.Name); len(ns) != 0 {
		t.Fatalf("Up left namespaces %v after refusing", ns)
	}
	// A run dir too long for the sockets.
	long := filepath.Join(dir, strings.Repeat("d", 90))
	self, _ := os.Executable()
	_, err = Up(ctx, topo, Options{RunDir: long, Meshctl: self, Agent: self})
	if err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("Up with a long run dir: %v", err)
	}
	// An invalid topology.
	bad := *topo
	bad.Name = "Bad"
	if _, err := Up(ctx, &bad, Options{RunDir: dir}); !errors.Is(err, ErrTopology) {
		t.Fatalf("Up with a bad name: %v", err)
	}
}

const smallTopology = `
name: %s
clusters:
  - name: c1
    id: 4
    podCIDR: 10.211.0.0/16
    namespaces: [{name: prod}]
    nodes:
      - name: n1
        pods: [{name: a, namespace: prod, ports: [{port: 80}]}]
`

// TestUpFailsCleanly starts a lab whose agent exits at once: Up must fail
// naming the agent, and leave nothing behind.
func TestUpFailsCleanly(t *testing.T) {
	requireLab(t)
	meshctl, _ := labBinaries(t)
	name := uniqueName(t)
	topo, err := ParseTopology(fmt.Appendf(nil, smallTopology, name))
	if err != nil {
		t.Fatal(err)
	}
	o := Options{RunDir: t.TempDir(), Meshctl: meshctl, Agent: "/bin/false"}
	t.Cleanup(func() { _ = Down(context.Background(), name, o) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = Up(ctx, topo, o)
	if err == nil || !strings.Contains(err.Error(), "the agent exited") {
		t.Fatalf("Up with an agent that exits: %v", err)
	}
	assertGone(t, name, filepath.Join(o.RunDir, name), nil)
}

// TestDownWithoutState removes a lab whose state file is lost, as after a
// crash in the middle of Up: the namespaces are found by name, the
// processes by their mark.
func TestDownWithoutState(t *testing.T) {
	requireLab(t)
	meshctl, agent := labBinaries(t)
	name := uniqueName(t)
	topo, err := ParseTopology(fmt.Appendf(nil, smallTopology, name))
	if err != nil {
		t.Fatal(err)
	}
	o := Options{RunDir: t.TempDir(), Meshctl: meshctl, Agent: agent}
	t.Cleanup(func() { _ = Down(context.Background(), name, o) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := Up(ctx, topo, o)
	if err != nil {
		t.Fatal(err)
	}
	left := leftovers(t, l)
	if err := os.Remove(filepath.Join(l.Dir(), stateFile)); err != nil {
		t.Fatal(err)
	}
	if err := Down(ctx, name, o); err != nil {
		t.Fatal(err)
	}
	assertGone(t, name, l.Dir(), left.pids)
	// Without the state file Down looks for pins at the default place.
	if _, err := os.Stat(filepath.Join(DefaultBPFFS, "mp-"+name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left after Down (%v)", err)
	}
}

func assertGone(t *testing.T, name, dir string, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if running(pid) {
			t.Errorf("process %d still runs", pid)
		}
	}
	if found := scanProcs(dir); len(found) != 0 {
		t.Errorf("processes %v of the lab still run", found)
	}
	if ns, _ := listLabNetns(name); len(ns) != 0 {
		t.Errorf("namespaces %v left", ns)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run dir %s left (%v)", dir, err)
	}
}

// TestUpExternalEtcdRefused: a cluster whose external etcd refuses
// connections fails Up at once, before anything is made, with a message
// that names the etcd, not after the 90 s an agent or etcd gets to be
// ready.
func TestUpExternalEtcdRefused(t *testing.T) {
	requireLab(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "http://" + ln.Addr().String()
	_ = ln.Close()
	name := uniqueName(t)
	topo, err := ParseTopology(fmt.Appendf(nil, smallTopology+"    etcd: {endpoints: [%q]}\n", name, ep))
	if err != nil {
		t.Fatal(err)
	}
	// Binaries that do nothing: whatever Up would start exits at once (the
	// test binary itself would run the tests again).
	dir := t.TempDir()
	o := Options{RunDir: dir, Meshctl: "/bin/true", Agent: "/bin/true"}
	t.Cleanup(func() { _ = Down(context.Background(), name, o) })
	done := make(chan error, 1)
	go func() { _, err := Up(context.Background(), topo, o); done <- err }()
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		t.Fatal("Up with a refusing external etcd still runs after a minute")
	}
	if err == nil || !strings.Contains(err.Error(), "cluster c1: external etcd") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Up with a refusing external etcd: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("Up left %v in the run dir", entries)
	}
	if ns, _ := listLabNetns(name); len(ns) != 0 {
		t.Fatalf("Up left namespaces %v", ns)
	}
}

// TestCheckHostMountsBPFFS: the lab (and so the demo) mounts a bpffs
// where its BPFFS has none, instead of failing with "no bpffs".
func TestCheckHostMountsBPFFS(t *testing.T) {
	requireLab(t)
	dir := filepath.Join(t.TempDir(), "bpffs")
	t.Cleanup(func() {
		for unix.Unmount(dir, unix.MNT_DETACH) == nil {
		}
	})
	if err := checkHost(Options{BPFFS: dir}); err != nil {
		t.Fatalf("checkHost on a directory without bpffs: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("%s is not a bpffs after checkHost (%v)", dir, err)
	}
}
