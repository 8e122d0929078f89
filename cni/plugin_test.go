package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/bpf/bpftest"
	"github.com/meshplane/meshplane/cni"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/etcdtest"
	"github.com/meshplane/meshplane/netnstest"
	"github.com/meshplane/meshplane/nodeagent"
	"github.com/meshplane/meshplane/pod"
)

var nodeSeq atomic.Int64

// node is a test node: a network namespace where the plugin runs (the
// veths' host sides live there) and an agent in this process with the
// "none" datapath (its maps, no programs: the host sides are not in the
// agent's namespace), on the shared etcd.
type node struct {
	t       *testing.T
	ns      *netnstest.NS
	cfg     nodeagent.Config
	a       *nodeagent.Agent
	etcd    *kvstore.Client
	keys    kvstore.Keys
	socket  string
	cluster string
}

func startNode(t *testing.T, metadataWait time.Duration) *node {
	t.Helper()
	bpftest.Require(t)
	cluster := etcdtest.Cluster(t)
	keys, err := kvstore.NewKeys(cluster)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("cni%d-%d", os.Getpid(), nodeSeq.Add(1))
	dir := t.TempDir()
	n := &node{t: t, ns: netnstest.New(t), etcd: srv.Client(t), keys: keys, socket: filepath.Join(dir, "agent.sock"), cluster: cluster}
	n.cfg = nodeagent.Config{
		Node: name, Cluster: cluster, ClusterID: 1, Etcd: srv.Config(),
		StateDir:   filepath.Join(dir, "state"),
		NodeIPs:    []netip.Addr{netip.MustParseAddr("127.0.2.1")},
		GossipAddr: netip.MustParseAddr("127.0.0.1"), GossipPort: -1, GossipInsecure: true,
		APISocket: n.socket, APISocketGroup: -1,
		Datapath:        nodeagent.DatapathNone,
		RoutingMode:     nodeagent.RoutingNone, // the agent shares the test's network namespace
		PodMetadataWait: metadataWait,
	}
	t.Cleanup(func() { _ = bpf.RemovePins(bpf.Config{Node: name}) })
	n.a, err = nodeagent.New(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent: Run() = %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("agent did not stop within 30s")
		}
	})
	eventually(t, 30*time.Second, "agent ok", func() error {
		if st := n.a.Status(); st.State != nodeagent.StateOK {
			return fmt.Errorf("state %s: %v", st.State, st.Reasons)
		}
		return nil
	})
	return n
}

// putPod writes a pod's and its namespace's metadata, as the control
// plane does.
func (n *node) putPod(namespace, name string, l map[string]string) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pb, err := pod.Pod{Namespace: namespace, Name: name, Node: n.cfg.Node, Labels: l}.Encode()
	if err != nil {
		n.t.Fatal(err)
	}
	nb, err := pod.Namespace{Name: namespace}.Encode()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := n.etcd.Put(ctx, n.keys.Pod(n.cfg.Node, namespace, name), pb); err != nil {
		n.t.Fatal(err)
	}
	if err := n.etcd.Put(ctx, n.keys.Namespace(namespace), nb); err != nil {
		n.t.Fatal(err)
	}
}

// conf is the plugin's network configuration for this node.
func (n *node) conf(extra map[string]any) []byte {
	c := map[string]any{"cniVersion": "1.1.0", "name": "meshplane", "type": "mesh-cni", "socket": n.socket}
	for k, v := range extra {
		c[k] = v
	}
	b, err := json.Marshal(c)
	if err != nil {
		n.t.Fatal(err)
	}
	return b
}

// call is one plugin invocation.
type call struct {
	cmd, containerID, netns, ifname string
	namespace, pod                  string
	stdin                           []byte
}

// run execs the plugin binary in the node's namespace with the CNI
// environment, as a runtime does, and returns its stdout; a failure is a
// *types.Error decoded from that stdout.
func (n *node) run(c call) ([]byte, error) {
	n.t.Helper()
	env := []string{"CNI_COMMAND=" + c.cmd, "CNI_PATH=" + filepath.Dir(pluginBin), "PATH=" + os.Getenv("PATH")}
	if c.containerID != "" {
		env = append(env, "CNI_CONTAINERID="+c.containerID)
	}
	if c.netns != "" {
		env = append(env, "CNI_NETNS="+c.netns)
	}
	if c.ifname != "" {
		env = append(env, "CNI_IFNAME="+c.ifname)
	}
	if c.namespace != "" {
		env = append(env, fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s", c.namespace, c.pod, c.containerID))
	}
	var stdout, stderr bytes.Buffer
	err := n.ns.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, pluginBin)
		cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = env, bytes.NewReader(c.stdin), &stdout, &stderr
		return cmd.Run()
	})
	if err != nil {
		var te types.Error
		if jerr := json.Unmarshal(stdout.Bytes(), &te); jerr == nil && te.Msg != "" {
			return stdout.Bytes(), &te
		}
		return stdout.Bytes(), fmt.Errorf("mesh-cni %s: %w; stdout %q; stderr %q", c.cmd, err, stdout.String(), stderr.String())
	}
	return stdout.Bytes(), nil
}

// add runs ADD for a new pod (its metadata put first) and parses the result.
func (n *node) add(t *testing.T, cid, namespace, name string, podNS *netnstest.NS) *current.Result {
	t.Helper()
	n.putPod(namespace, name, map[string]string{"app": name})
	out, err := n.run(call{cmd: "ADD", containerID: cid, netns: podNS.Path(), ifname: "eth0", namespace: namespace, pod: name, stdin: n.conf(nil)})
	if err != nil {
		t.Fatalf("ADD %s/%s: %v", namespace, name, err)
	}
	res, err := current.NewResult(out)
	if err != nil {
		t.Fatalf("ADD %s/%s: result %s: %v", namespace, name, out, err)
	}
	r, err := current.GetResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// hostVeths lists the interfaces with the plugin's prefix in the node.
func (n *node) hostVeths() []string {
	n.t.Helper()
	links, err := n.ns.Netlink().LinkList()
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, cni.HostVethPrefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// endpoints are the agent's endpoints, as "namespace/pod container".
func (n *node) endpoints() []string {
	var out []string
	for _, ep := range n.a.Endpoints() {
		out = append(out, ep.Namespace+"/"+ep.Pod+" "+ep.ContainerID)
	}
	return out
}

// requireNothingLeft checks that the node has no veth, no endpoint and no
// pod IP in use.
func (n *node) requireNothingLeft(t *testing.T) {
	t.Helper()
	if v := n.hostVeths(); len(v) > 0 {
		t.Errorf("veths left in the node: %v", v)
	}
	if eps := n.endpoints(); len(eps) > 0 {
		t.Errorf("endpoints left in the agent: %v", eps)
	}
	if used := n.a.Status().IPAM.Used; used != 0 {
		t.Errorf("%d pod IPs still in use", used)
	}
}

func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// TestAddCheckDel runs a pod's life through the plugin binary: ADD gives a
// conformant result that matches the pod's namespace and the agent, CHECK
// passes and then catches a removed address, DEL cleans up and may be
// repeated, including without the netns.
func TestAddCheckDel(t *testing.T) {
	n := startNode(t, 0)
	podNS := netnstest.New(t)
	const cid = "c0ffee0000000000000000000000000000000000000000000000000000000001"
	res := n.add(t, cid, "shop", "web-1", podNS)

	// The result: host side, then the pod side in its sandbox; one IPv4
	// address on interface 1 with its gateway; the default route.
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != cni.HostVethName(cid, "eth0") || res.Interfaces[0].Sandbox != "" ||
		res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != podNS.Path() {
		t.Fatalf("interfaces = %+v", res.Interfaces)
	}
	if len(res.IPs) != 1 || res.IPs[0].Interface == nil || *res.IPs[0].Interface != 1 || res.IPs[0].Gateway == nil {
		t.Fatalf("ips = %+v", res.IPs)
	}
	ip := res.IPs[0].Address
	if ones, bits := ip.Mask.Size(); ones != 32 || bits != 32 {
		t.Fatalf("address %s: want a /32", ip.String())
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || !res.Routes[0].GW.Equal(res.IPs[0].Gateway) {
		t.Fatalf("routes = %+v", res.Routes)
	}
	// The agent has the endpoint with that IP and the container.
	eps := n.a.Endpoints()
	if len(eps) != 1 || eps[0].ContainerID != cid || eps[0].IfName != "eth0" || eps[0].IPs[0].String() != ip.IP.String() || eps[0].Netns != podNS.Path() {
		t.Fatalf("agent endpoints = %+v", eps)
	}
	// The pod has it, with the gateway's permanent neighbour entry.
	eth, err := podNS.Netlink().LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := podNS.Netlink().AddrList(eth, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != ip.String() {
		t.Fatalf("pod addresses = %v (%v), want %s", addrs, err, ip.String())
	}
	neighs, err := podNS.Netlink().NeighList(eth.Attrs().Index, netlink.FAMILY_V4)
	if err != nil || !slices.ContainsFunc(neighs, func(nb netlink.Neigh) bool {
		return nb.IP.Equal(res.IPs[0].Gateway) && nb.State == netlink.NUD_PERMANENT && nb.HardwareAddr.String() == res.Interfaces[0].Mac
	}) {
		t.Fatalf("pod neighbours = %v (%v): no permanent entry for the gateway %s with the host side's MAC %s", neighs, err, res.IPs[0].Gateway, res.Interfaces[0].Mac)
	}

	// CHECK with the ADD's result as prevResult.
	prev, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	checkConf := n.conf(map[string]any{"prevResult": json.RawMessage(prev)})
	check := call{cmd: "CHECK", containerID: cid, netns: podNS.Path(), ifname: "eth0", namespace: "shop", pod: "web-1", stdin: checkConf}
	if _, err := n.run(check); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := podNS.Netlink().AddrDel(eth, &addrs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := n.run(check); err == nil || !strings.Contains(err.Error(), "has no address") {
		t.Fatalf("CHECK without the pod's address = %v, want an error naming it", err)
	}

	// DEL, twice; the second without the netns (the runtime may have
	// removed it already).
	del := call{cmd: "DEL", containerID: cid, netns: podNS.Path(), ifname: "eth0", namespace: "shop", pod: "web-1", stdin: n.conf(nil)}
	if _, err := n.run(del); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	n.requireNothingLeft(t)
	del.netns = ""
	if _, err := n.run(del); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	// CHECK of a deleted attachment fails.
	if _, err := n.run(check); err == nil {
		t.Fatal("CHECK after DEL succeeded")
	}
}

// TestDelUnknownAndHalfCreated: DEL succeeds for a container the agent
// never saw, for one whose ADD stopped after the veth (the veth goes), and
// without Kubernetes arguments (the endpoint is found by container ID).
func TestDelUnknownAndHalfCreated(t *testing.T) {
	n := startNode(t, 0)
	podNS := netnstest.New(t)
	conf := n.conf(nil)
	if _, err := n.run(call{cmd: "DEL", containerID: "unknown-container", ifname: "eth0", namespace: "shop", pod: "nobody", stdin: conf}); err != nil {
		t.Fatalf("DEL of an unknown pod: %v", err)
	}
	const half = "half0000000000000000000000000000000000000000000000000000000000001"
	if _, err := cni.CreateVeth(cni.VethSpec{HostNetns: n.ns.Path(), HostName: cni.HostVethName(half, "eth0"), PodNetns: podNS.Path(), PodIfName: "eth0", ContainerID: half}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.run(call{cmd: "DEL", containerID: half, netns: podNS.Path(), ifname: "eth0", namespace: "shop", pod: "half", stdin: conf}); err != nil {
		t.Fatalf("DEL of a half-created pod: %v", err)
	}
	n.requireNothingLeft(t)

	// Without CNI_ARGS, by container ID.
	podNS2 := netnstest.New(t)
	const cid = "noargs000000000000000000000000000000000000000000000000000000000001"
	n.add(t, cid, "shop", "web-2", podNS2)
	if _, err := n.run(call{cmd: "DEL", containerID: cid, ifname: "eth0", stdin: conf}); err != nil {
		t.Fatalf("DEL without CNI_ARGS: %v", err)
	}
	n.requireNothingLeft(t)
}

// TestDelOldSandbox: the DEL of an old container of a pod leaves the
// endpoint that a newer container of the same pod has.
func TestDelOldSandbox(t *testing.T) {
	n := startNode(t, 0)
	podNS := netnstest.New(t)
	n.add(t, "new-sandbox", "shop", "web-1", podNS)
	if _, err := n.run(call{cmd: "DEL", containerID: "old-sandbox", ifname: "eth0", namespace: "shop", pod: "web-1", stdin: n.conf(nil)}); err != nil {
		t.Fatalf("DEL of the old sandbox: %v", err)
	}
	if eps := n.endpoints(); !slices.Equal(eps, []string{"shop/web-1 new-sandbox"}) {
		t.Fatalf("endpoints = %v, want the new sandbox's", eps)
	}
}

// TestAgentDown: ADD against a socket nobody serves fails with code 11 and
// a message naming the socket, and leaves no veth; DEL removes the veth
// and fails the same way (the IPs are the agent's to release); STATUS
// says the plugin is not available.
func TestAgentDown(t *testing.T) {
	n := startNode(t, 0)
	podNS := netnstest.New(t)
	gone := filepath.Join(t.TempDir(), "no-agent.sock")
	conf := n.conf(map[string]any{"socket": gone})
	_, err := n.run(call{cmd: "ADD", containerID: "down1", netns: podNS.Path(), ifname: "eth0", namespace: "shop", pod: "web-1", stdin: conf})
	if err == nil || cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), gone) || !strings.Contains(err.Error(), "is mesh-agent running on this node?") {
		t.Fatalf("ADD with the agent down = %v (code %d), want code 11 naming %s and asking whether mesh-agent runs", err, cniCode(err), gone)
	}
	n.requireNothingLeft(t)
	if _, err := cni.CreateVeth(cni.VethSpec{HostNetns: n.ns.Path(), HostName: cni.HostVethName("down2", "eth0"), PodNetns: podNS.Path(), PodIfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	_, err = n.run(call{cmd: "DEL", containerID: "down2", ifname: "eth0", namespace: "shop", pod: "web-1", stdin: conf})
	if err == nil || cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), gone) {
		t.Fatalf("DEL with the agent down = %v, want code 11 naming the socket", err)
	}
	if v := n.hostVeths(); len(v) > 0 {
		t.Fatalf("DEL with the agent down left the veth: %v", v)
	}
	_, err = n.run(call{cmd: "STATUS", stdin: conf})
	if err == nil || cniCode(err) != 50 {
		t.Fatalf("STATUS with the agent down = %v, want code 50", err)
	}
	if _, err := n.run(call{cmd: "STATUS", stdin: n.conf(nil)}); err != nil {
		t.Fatalf("STATUS with the agent up: %v", err)
	}
}

// TestAddIntoOwnNetns: an ADD (or CHECK) whose CNI_NETNS is the plugin's
// own namespace is refused with code 4, as skel refuses it (the plugin
// makes the check itself, without /proc), and leaves nothing behind.
func TestAddIntoOwnNetns(t *testing.T) {
	n := startNode(t, 0)
	n.putPod("shop", "web-1", map[string]string{"app": "web"})
	for _, cmd := range []string{"ADD", "CHECK"} {
		_, err := n.run(call{cmd: cmd, containerID: "own1", netns: n.ns.Path(), ifname: "eth0", namespace: "shop", pod: "web-1", stdin: n.conf(nil)})
		if err == nil || cniCode(err) != types.ErrInvalidNetNS || !strings.Contains(err.Error(), "should not be the same") {
			t.Fatalf("%s into the plugin's own netns = %v (code %d), want code %d", cmd, err, cniCode(err), types.ErrInvalidNetNS)
		}
	}
	n.requireNothingLeft(t)
}

// TestNoMetadata: a pod whose labels the control plane has not written
// waits the agent's bounded time, then fails with code 11 and a message
// that says so, leaving nothing behind.
func TestNoMetadata(t *testing.T) {
	n := startNode(t, time.Second)
	podNS := netnstest.New(t)
	_, err := n.run(call{cmd: "ADD", containerID: "nometa", netns: podNS.Path(), ifname: "eth0", namespace: "shop", pod: "unpublished", stdin: n.conf(nil)})
	if err == nil || cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "no labels for the pod") ||
		!strings.Contains(err.Error(), "pods/<node>/shop/unpublished") || !strings.Contains(err.Error(), "control plane") {
		t.Fatalf("ADD without metadata = %v (code %d), want code 11 saying the pod's labels are not in etcd", err, cniCode(err))
	}
	n.requireNothingLeft(t)
	// Once the control plane has written it, the same ADD works.
	n.add(t, "nometa", "shop", "unpublished", podNS)
}

// TestGC: GC keeps the attachments the runtime lists and removes the
// others: an endpoint with its veth, and a veth whose ADD never reached the
// agent.
func TestGC(t *testing.T) {
	n := startNode(t, 0)
	keepNS, dropNS, strayNS := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	n.add(t, "keep", "shop", "keep", keepNS)
	n.add(t, "drop", "shop", "drop", dropNS)
	if _, err := cni.CreateVeth(cni.VethSpec{HostNetns: n.ns.Path(), HostName: cni.HostVethName("stray", "eth0"), PodNetns: strayNS.Path(), PodIfName: "eth0", ContainerID: "stray"}); err != nil {
		t.Fatal(err)
	}
	conf := n.conf(map[string]any{"cni.dev/valid-attachments": []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}})
	if _, err := n.run(call{cmd: "GC", stdin: conf}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if eps := n.endpoints(); !slices.Equal(eps, []string{"shop/keep keep"}) {
		t.Fatalf("endpoints after GC = %v, want only shop/keep", eps)
	}
	if v := n.hostVeths(); !slices.Equal(v, []string{cni.HostVethName("keep", "eth0")}) {
		t.Fatalf("veths after GC = %v, want only keep's", v)
	}
}

// TestVersion: VERSION lists every spec version up to 1.1.0.
func TestVersion(t *testing.T) {
	n := startNode(t, 0)
	out, err := n.run(call{cmd: "VERSION", stdin: []byte(`{"cniVersion":"1.1.0"}`)})
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("VERSION output %s: %v", out, err)
	}
	for _, want := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		if !slices.Contains(v.SupportedVersions, want) {
			t.Errorf("supportedVersions %v lack %s", v.SupportedVersions, want)
		}
	}
}

// TestAddResultOldVersion: a 1.0.0 configuration (containerd 1.6's) gets a
// 1.0.0 result.
func TestAddResultOldVersion(t *testing.T) {
	n := startNode(t, 0)
	podNS := netnstest.New(t)
	n.putPod("shop", "old", nil)
	conf := n.conf(map[string]any{"cniVersion": "1.0.0"})
	out, err := n.run(call{cmd: "ADD", containerID: "old", netns: podNS.Path(), ifname: "eth0", namespace: "shop", pod: "old", stdin: conf})
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.CNIVersion != "1.0.0" {
		t.Fatalf("result %s: version %q (%v), want 1.0.0", out, r.CNIVersion, err)
	}
}

// TestDefaultSocket holds the plugin's default socket to the agent's.
func TestDefaultSocket(t *testing.T) {
	if cni.DefaultSocket != nodeagent.DefaultAPISocket {
		t.Fatalf("cni.DefaultSocket %q != nodeagent.DefaultAPISocket %q", cni.DefaultSocket, nodeagent.DefaultAPISocket)
	}
	if cni.DefaultTimeout <= nodeagent.DefaultPodMetadataWait {
		t.Fatalf("cni.DefaultTimeout %s must exceed nodeagent.DefaultPodMetadataWait %s", cni.DefaultTimeout, nodeagent.DefaultPodMetadataWait)
	}
}
