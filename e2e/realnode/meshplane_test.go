package realnode_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/cni"
	"github.com/meshplane/meshplane/kubenode"
)

// overlay is the manifests' install that the node gets: its init
// container's command installs the CNI config, its RBAC objects are what
// the control plane runs with.
const overlay = "../../deploy/kustomize/overlays/single"

// cleanupOverlay is the manifests' uninstall: its commands remove the CNI
// config and the agent's pins and state.
const cleanupOverlay = "../../deploy/kustomize/overlays/cleanup"

// Meshplane is meshplane running on a kubenode: the CNI config installed
// by the manifests' install-cni command, mesh-agent and
// mesh-controlplane as processes in the node's namespace on the node's
// etcd.
type Meshplane struct {
	Node *kubenode.Node
	// Kube is the admin's clientset of the node's apiserver.
	Kube *kubernetes.Clientset
	// Agent is a client of the agent's API socket.
	Agent api.AgentClient
	// PodCIDR is the agent's pod range.
	PodCIDR netip.Prefix
	// Dir holds the agent's socket, state and the control plane's
	// kubeconfig; BPFFS the agent's pins.
	Dir, BPFFS string
	// InstallCommand is the install-cni init container's command as run
	// (host paths rewritten to the node's); UninstallCommand and
	// CleanupCommand the cleanup overlay's uninstall-cni and remove-pins
	// (run by Uninstall and by the cleanup).
	InstallCommand, UninstallCommand, CleanupCommand []string
	// Timings of StartMeshplane, for the log.
	Timings struct{ Node, CNI, Agent, ControlPlane, NodeReady time.Duration }

	bin     string
	volumes map[string]string // the manifests' hostPath volumes -> private dirs
}

// StartMeshplane starts a kubenode without a network and meshplane on it,
// and returns when the node is Ready. It skips (or fails, with
// MESHPLANE_REQUIRE_KUBENODE) without kubenode's binaries or root; the
// meshplane binaries are MESHPLANE_LAB_BIN's or TestMain's. cfg.NoCNI is forced. The agent routes natively (one
// node) with the eBPF datapath; the control plane authenticates as the
// manifests' ServiceAccount with the manifests' ClusterRole (a token from
// the TokenRequest API). Cleanup: the node's (pods deleted while the
// agent runs, so CNI DEL releases their IPs; the daemons stopped), then
// `mesh-agent --cleanup` (the uninstall's command) and the directories.
func StartMeshplane(t *testing.T, cfg kubenode.Config) *Meshplane {
	t.Helper()
	kubenode.Require(t)
	bin := binDir
	if bin == "" {
		// Only without root or kubenode's binaries, which Require
		// reported.
		t.Fatal("no meshplane binaries: set MESHPLANE_LAB_BIN (make build)")
	}
	for _, b := range []string{"mesh-agent", "mesh-controlplane", "mesh-cni"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("MESHPLANE_LAB_BIN=%s: %v (run make build)", bin, err)
		}
	}
	sweepStale(t)
	m := &Meshplane{}
	var err error
	// Short: the agent's socket path is bounded. The PID in the names
	// lets the next run remove what a killed test binary left.
	prefix := fmt.Sprintf("mpr-%d-", os.Getpid())
	if m.Dir, err = os.MkdirTemp("", prefix); err != nil {
		t.Fatal(err)
	}
	m.BPFFS = filepath.Join("/sys/fs/bpf", filepath.Base(m.Dir))
	if err := os.MkdirAll(m.BPFFS, 0o700); err != nil {
		_ = os.RemoveAll(m.Dir)
		t.Fatal(err)
	}
	// Registered before the node's: runs after it (LIFO), once the agent
	// is stopped.
	t.Cleanup(func() { m.cleanup(t) })

	t0 := time.Now()
	cfg.NoCNI = true
	n := kubenode.Start(t, cfg)
	m.Node = n
	m.Timings.Node = time.Since(t0)
	m.Kube, err = kubernetes.NewForConfig(adminConfig(n))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	objs := render(t, overlay)
	m.rewriteHostPaths(t, bin)
	cleanupObjs := render(t, cleanupOverlay)
	m.UninstallCommand = m.command(t, cleanupObjs, "mesh-cleanup", "uninstall-cni")
	m.CleanupCommand = m.command(t, cleanupObjs, "mesh-cleanup", "remove-pins")
	t1 := time.Now()
	m.installCNI(ctx, t, objs, bin)
	m.Timings.CNI = time.Since(t1)

	t1 = time.Now()
	m.startAgent(ctx, t, bin)
	m.Timings.Agent = time.Since(t1)

	t1 = time.Now()
	m.startControlPlane(ctx, t, objs, bin)
	m.Timings.ControlPlane = time.Since(t1)

	t1 = time.Now()
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	m.Timings.NodeReady = time.Since(t1)
	return m
}

func adminConfig(n *kubenode.Node) *rest.Config {
	return &rest.Config{
		Host: n.Host, BearerToken: n.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: n.CAPEM},
		Dial:            n.Dial,
	}
}

// object is one rendered manifest object.
type object struct {
	kind, name string
	yaml       []byte
	m          map[string]any
}

// render builds the overlay with krusty (kustomize build).
func render(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []object
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		mm, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, object{kind: r.GetKind(), name: r.GetName(), yaml: y, m: mm})
	}
	return objs
}

// rewriteHostPaths sets what the manifests' volumes become here: each
// hostPath volume's private directory on this node.
// The run and state directories are made here, as the volumes'
// DirectoryOrCreate would.
func (m *Meshplane) rewriteHostPaths(t *testing.T, bin string) {
	t.Helper()
	m.bin = bin
	m.volumes = map[string]string{
		"cni-bin": m.Node.CNIBinDir, "cni-conf": m.Node.CNIConfDir,
		"bpffs": m.BPFFS, "run": filepath.Join(m.Dir, "run"), "state": filepath.Join(m.Dir, "state"),
	}
	for _, v := range []string{"run", "state"} {
		if err := os.Mkdir(m.volumes[v], 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

// command is the command of container (an init container or not) of the
// DaemonSet ds in objs, as it would run on this node: every argument
// under one of the container's mount paths, or under a volume's host path
// (the install's --socket is the host's path, not mounted), moved to the
// volume's private directory; $(MESHPLANE_NODE_NAME) the node's name; the binary
// MESHPLANE_LAB_BIN's.
func (m *Meshplane) command(t *testing.T, objs []object, ds, container string) []string {
	t.Helper()
	for _, o := range objs {
		if o.kind != "DaemonSet" || o.name != ds {
			continue
		}
		spec := o.m["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		hostPaths := map[string]string{} // volume -> host path
		for _, v := range spec["volumes"].([]any) {
			v := v.(map[string]any)
			if hp, ok := v["hostPath"].(map[string]any); ok {
				hostPaths[v["name"].(string)] = hp["path"].(string)
			}
		}
		cs, _ := spec["initContainers"].([]any)
		cs = append(cs, spec["containers"].([]any)...)
		for _, c := range cs {
			c := c.(map[string]any)
			if c["name"] != container {
				continue
			}
			var prefixes [][2]string // from, to
			for _, vm := range c["volumeMounts"].([]any) {
				vm := vm.(map[string]any)
				name := vm["name"].(string)
				to, ok := m.volumes[name]
				if !ok {
					continue
				}
				prefixes = append(prefixes, [2]string{vm["mountPath"].(string), to})
			}
			// A host path is the node's whatever the container mounts.
			for name, hp := range hostPaths {
				if to, ok := m.volumes[name]; ok {
					prefixes = append(prefixes, [2]string{hp, to})
				}
			}
			var cmd []string
			for i, a := range c["command"].([]any) {
				s := strings.ReplaceAll(a.(string), "$(MESHPLANE_NODE_NAME)", m.Node.Name)
				if i == 0 {
					s = filepath.Join(m.bin, filepath.Base(s))
				}
				for _, p := range prefixes {
					if p[0] != "" && (s == p[0] || strings.HasPrefix(s, p[0]+"/")) {
						s = p[1] + strings.TrimPrefix(s, p[0])
						break
					}
				}
				cmd = append(cmd, s)
			}
			return cmd
		}
	}
	t.Fatalf("no DaemonSet %s with a container %s in the manifests", ds, container)
	return nil
}

func (m *Meshplane) socket() string { return filepath.Join(m.volumes["run"], "agent.sock") }

// stateDir is the agent's --state-dir, /var/lib/meshplane/<node> in the
// manifests.
func (m *Meshplane) stateDir() string { return filepath.Join(m.volumes["state"], m.Node.Name) }

// installCNI runs the init container's command against the node's CNI
// dirs. The node's private bin dir has no loopback plugin (containerd
// fails every sandbox without one): the install links mesh-cni as
// loopback, and the node's sandboxes run it.
func (m *Meshplane) installCNI(ctx context.Context, t *testing.T, objs []object, bin string) {
	t.Helper()
	n := m.Node
	m.InstallCommand = m.command(t, objs, "mesh-agent", "install-cni")
	for _, dir := range []string{n.CNIBinDir, n.CNIConfDir, m.socket()} {
		if !strings.Contains(strings.Join(m.InstallCommand, " "), dir) {
			t.Fatalf("the install-cni command %v does not name %s", m.InstallCommand, dir)
		}
	}
	t.Logf("install-cni: %s", strings.Join(m.InstallCommand, " "))
	cmd := exec.CommandContext(ctx, m.InstallCommand[0], m.InstallCommand[1:]...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install-cni %v: %v\n%s", m.InstallCommand, err, out)
	}
	lo, err1 := os.Stat(filepath.Join(n.CNIBinDir, cni.LoopbackType))
	plugin, err2 := os.Stat(filepath.Join(n.CNIBinDir, cni.PluginType))
	if err1 != nil || err2 != nil || !os.SameFile(lo, plugin) {
		t.Fatalf("after install-cni, %s/loopback is not mesh-cni: %v, %v", n.CNIBinDir, err1, err2)
	}
}

// startAgent runs mesh-agent in the node's namespace and waits until it
// is ok with a pod CIDR.
func (m *Meshplane) startAgent(ctx context.Context, t *testing.T, bin string) {
	t.Helper()
	n := m.Node
	if err := n.StartProcess("mesh-agent", filepath.Join(bin, "mesh-agent"), m.agentArgs()...); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+m.socket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	m.Agent = api.NewAgentClient(conn)
	err = poll(ctx, func() (bool, string) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := m.Agent.Status(cctx, &api.StatusRequest{})
		if err != nil {
			return false, err.Error()
		}
		if st.State != "ok" || st.Ipam == nil || len(st.Ipam.PodCidrs) == 0 {
			return false, fmt.Sprintf("%s %v", st.State, st.Reasons)
		}
		m.PodCIDR, err = netip.ParsePrefix(st.Ipam.PodCidrs[0])
		return err == nil, fmt.Sprint(err)
	})
	if err != nil {
		t.Fatalf("mesh-agent not ok: %v; its log:\n%s", err, n.Log("mesh-agent"))
	}
}

func (m *Meshplane) agentArgs() []string {
	n := m.Node
	return []string{
		"--node-name=" + n.Name,
		"--node-ip=" + n.NodeIP.String(),
		"--cluster-name=default", "--cluster-id=1",
		"--etcd-endpoints=" + n.EtcdEndpoint,
		"--state-dir=" + m.stateDir(),
		"--bpffs=" + m.BPFFS,
		"--api-socket=" + m.socket(),
		"--metrics-address=",
		"--gossip-insecure",
		"--routing-mode=native",
		"--datapath=ebpf",
	}
}

// The manifests' objects the control plane needs before it starts: its
// namespace, ServiceAccount and RBAC, and the CRDs (it runs with
// install-crds: false, as the manifests' config says).
var cpKinds = map[string]bool{
	"Namespace": true, "CustomResourceDefinition": true, "ServiceAccount": true,
	"ClusterRole": true, "ClusterRoleBinding": true, "Role": true, "RoleBinding": true,
}

// startControlPlane applies the manifests' RBAC and CRDs with kubectl,
// gets a token of the mesh-controlplane ServiceAccount and runs
// mesh-controlplane with it.
func (m *Meshplane) startControlPlane(ctx context.Context, t *testing.T, objs []object, bin string) {
	t.Helper()
	n := m.Node
	var docs [][]byte
	for _, o := range objs {
		if cpKinds[o.kind] {
			docs = append(docs, o.yaml)
		}
	}
	file := filepath.Join(m.Dir, "controlplane-objects.yaml")
	if err := os.WriteFile(file, joinDocs(docs), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := n.Kubectl(ctx, "apply", "--server-side", "-f", file); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := n.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	tr, err := m.Kube.CoreV1().ServiceAccounts("meshplane").CreateToken(ctx, "mesh-controlplane",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubenode"] = &clientcmdapi.Cluster{Server: n.Host, CertificateAuthorityData: n.CAPEM}
	kc.AuthInfos["mesh-controlplane"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["kubenode"] = &clientcmdapi.Context{Cluster: "kubenode", AuthInfo: "mesh-controlplane"}
	kc.CurrentContext = "kubenode"
	kubeconfig := filepath.Join(m.Dir, "controlplane.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	if err := n.StartProcess("mesh-controlplane", filepath.Join(bin, "mesh-controlplane"),
		"--name=realnode", "--cluster-name=default",
		"--etcd-endpoints="+n.EtcdEndpoint, "--kubeconfig="+kubeconfig,
		"--install-crds=false", "--metrics-address="); err != nil {
		t.Fatal(err)
	}
}

func joinDocs(docs [][]byte) []byte {
	var b []byte
	for _, d := range docs {
		b = append(b, "---\n"...)
		b = append(b, d...)
	}
	return b
}

// cleanup runs after the node's: the agent is stopped and the node's
// namespace gone. mesh-agent --cleanup removes its pins, state and
// socket, as the manifests' uninstall does.
func (m *Meshplane) cleanup(t *testing.T) {
	if m.CleanupCommand != nil {
		cmd := exec.Command(m.CleanupCommand[0], m.CleanupCommand[1:]...)
		cmd.Env = append(os.Environ(), "MESHPLANE_NODE_NAME="+m.Node.Name)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("remove-pins %v: %v\n%s", m.CleanupCommand, err, out)
		}
		if _, err := os.Stat(m.stateDir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove-pins left the state dir %s (%v)", m.stateDir(), err)
		}
	}
	// --cleanup removes <bpffs>/meshplane/<node>; the empty
	// <bpffs>/meshplane it leaves (other nodes' pins may share it) goes
	// here.
	if err := os.Remove(filepath.Join(m.BPFFS, "meshplane")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mesh-agent --cleanup left pins: %v", err)
	}
	if err := os.Remove(m.BPFFS); err != nil {
		ents, _ := os.ReadDir(m.BPFFS)
		t.Errorf("remove %s: %v (left: %v)", m.BPFFS, err, ents)
		_ = os.RemoveAll(m.BPFFS)
	}
	if err := os.RemoveAll(m.Dir); err != nil {
		t.Error(err)
	}
}

// sweepStale removes the directories (agent state, socket, pins) of
// test binaries that were killed before their cleanup ran (a -timeout
// panic): /tmp/mpr-<pid>-* and /sys/fs/bpf/mpr-<pid>-* whose PID is gone.
// kubenode's Start sweeps the rest (the node, its daemons, containers and
// namespace).
func sweepStale(t *testing.T) {
	t.Helper()
	for _, pattern := range []string{filepath.Join(os.TempDir(), "mpr-*-*"), "/sys/fs/bpf/mpr-*-*"} {
		paths, _ := filepath.Glob(pattern)
		for _, p := range paths {
			pid, err := strconv.Atoi(strings.SplitN(filepath.Base(p), "-", 3)[1])
			if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
				continue
			}
			if err := os.RemoveAll(p); err != nil {
				t.Logf("stale %s: %v", p, err)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

// poll calls f every 200 ms until it returns true or ctx ends.
func poll(ctx context.Context, f func() (bool, string)) error {
	var last string
	for {
		ok, why := f()
		if ok {
			return nil
		}
		last = why
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Uninstall runs the cleanup overlay's uninstall-cni command: the
// conflist and the plugin go, and the node turns NotReady.
func (m *Meshplane) Uninstall(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, m.UninstallCommand[0], m.UninstallCommand[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("uninstall-cni %v: %w\n%s", m.UninstallCommand, err, out)
	}
	return nil
}
