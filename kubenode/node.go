package kubenode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/kubeapiserver"
	"github.com/meshplane/meshplane/netnstest"
)

// Config says what node to start. The zero Config is a node named
// "kubenode" at 10.99.0.1 with the standard bridge network on
// 10.244.0.0/24.
type Config struct {
	// Name is the node's name; empty means "kubenode". It lives in a
	// namespace of its own, so it need not be unique on the machine.
	Name string
	// NodeIP is the node's address (the kubelet's --node-ip, the
	// apiserver's --advertise-address), on a veth in the node's
	// namespace; zero means 10.99.0.1. It may not be loopback.
	NodeIP netip.Addr
	// PodCIDR is the standard network's pod range (a bridge, kn-br0,
	// holds its first address); zero means 10.244.0.0/24.
	PodCIDR netip.Prefix
	// ServiceCIDR is the apiserver's and controller manager's service
	// range; zero means 10.96.0.0/16.
	ServiceCIDR netip.Prefix
	// NoCNI starts the node without a network config: it stays NotReady
	// (and Start does not wait for Ready) until the test calls InstallCNI.
	NoCNI bool
}

// Defaults of a zero Config.
var (
	DefaultNodeIP  = netip.MustParseAddr("10.99.0.1")
	DefaultPodCIDR = netip.MustParsePrefix("10.244.0.0/24")
)

// The images every node has: the sandbox (pause) image and the test
// workload (probe serve: HTTP on :8080, TCP echo on :9000; see
// kubenode/internal/probe), both made of the probe binary.
const (
	PauseImage = "meshplane.local/pause:kubenode"
	ProbeImage = "meshplane.local/probe:kubenode"
)

// Fixed ports inside the node's namespace: nothing else listens there.
const (
	etcdClientPort = 2379
	etcdPeerPort   = 2380
	kubeletPort    = 10250
)

// readyTimeout bounds each wait of Start.
const readyTimeout = 3 * time.Minute

// Timings are how long the parts of Start took, for the test's log (not
// for assertions).
type Timings struct {
	// APIServer is from Start's call to the apiserver's /readyz.
	APIServer time.Duration
	// NodeReady is from Start's call to the node's Ready condition (zero
	// with NoCNI).
	NodeReady time.Duration
}

// Node is a running single-node Kubernetes in a network namespace of its
// own. Its methods may be called from any goroutine.
type Node struct {
	// Name is the node's name.
	Name string
	// NodeIP is its address; PodCIDR the standard network's range.
	NodeIP  netip.Addr
	PodCIDR netip.Prefix
	// NS is the node's network namespace: etcd, the control plane,
	// containerd and the kubelet run in it, and the pods' veths land in
	// it.
	NS *netnstest.NS
	// Dir holds everything of the node (short: unix socket paths are
	// bounded).
	Dir string
	// Host is the apiserver's URL (reachable with Dial, or from inside
	// NS); CAPEM its CA; AdminToken the admin's token (system:masters);
	// Kubeconfig the admin's kubeconfig (valid inside NS: use Kubectl).
	Host       string
	CAPEM      []byte
	AdminToken string
	Kubeconfig string
	// KubernetesServiceIP is the kubernetes Service's ClusterIP (the
	// service range's first address): see ProxyKubernetesService.
	KubernetesServiceIP netip.Addr
	// EtcdEndpoint is the node's etcd (inside NS), which the apiserver
	// stores in under its own prefix; meshplane may use it too.
	EtcdEndpoint string
	// ContainerdSocket is the node's containerd.
	ContainerdSocket string
	// CNIBinDir and CNIConfDir are containerd's CNI directories: see
	// InstallCNI.
	CNIBinDir, CNIConfDir string
	// ProbeBinary is the static probe binary the images hold.
	ProbeBinary string
	// Bins are the binaries the node runs.
	Bins Binaries
	// Timings of Start.
	Timings Timings

	tb      testing.TB
	bins    Binaries
	dirs    dirs
	sp      *spawner
	client  *kubeapiserver.Client
	cgroup  string
	network string
	host    hostDirs
	// kubeletPKI and kubeletKubeconfig are the kubelet's credentials.
	kubeletPKI        kubeletPKI
	kubeletKubeconfig string
	procs             []*proc    // in start order; cleanup stops them in reverse
	extra             []*proc    // StartProcess's, stopped before the kubelet
	mu                sync.Mutex // mu guards extra and byName
	byName            map[string]*proc
}

// dirs are the node's directories and files, all under Dir.
type dirs struct {
	root                                           string
	containerdRoot, containerdState, containerdOpt string
	containerdSock, runcRoot                       string
	cniBin, cniConf, ipam                          string
	kubeletRoot, kubeletCerts, podLogs             string
	etc, logs, images, etcd                        string
}

var seq atomic.Int64

// lockFile serializes nodes on the machine: the kubelet's device-plugin
// socket (/var/lib/kubelet/device-plugins/kubelet.sock) is a constant,
// so two kubelets at once would take it from each other.
const lockFile = "/run/lock/meshplane-kubenode.lock"

// lockTimeout bounds the wait for another node on the machine to finish.
const lockTimeout = 15 * time.Minute

// Start starts a node (Require first: it skips or fails without the
// binaries) and registers its cleanup with tb. It returns when the node
// is Ready (with cfg.NoCNI: when the kubelet runs). The node holds the
// machine's kubenode lock while it lives: a second Start elsewhere on
// the machine waits.
func Start(tb testing.TB, cfg Config) *Node {
	tb.Helper()
	bins := Require(tb)
	t0 := time.Now()
	n, err := newNode(tb, bins, cfg)
	if err != nil {
		tb.Fatalf("kubenode: %v", err)
	}
	if err := n.start(t0, cfg); err != nil {
		tb.Fatalf("kubenode: %v", err)
	}
	return n
}

func newNode(tb testing.TB, bins Binaries, cfg Config) (*Node, error) {
	if cfg.Name == "" {
		cfg.Name = "kubenode"
	}
	if !cfg.NodeIP.IsValid() {
		cfg.NodeIP = DefaultNodeIP
	}
	if cfg.NodeIP.IsLoopback() || cfg.NodeIP.IsUnspecified() {
		return nil, fmt.Errorf("node IP %s: the kubelet refuses loopback and unspecified addresses; pick another (the default is %s)", cfg.NodeIP, DefaultNodeIP)
	}
	if !cfg.PodCIDR.IsValid() {
		cfg.PodCIDR = DefaultPodCIDR
	}
	if err := lock(tb); err != nil {
		return nil, err
	}
	if err := sweepStale(); err != nil {
		return nil, err
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), seq.Add(1))
	root, err := os.MkdirTemp("", "kn-")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(root, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		_ = os.RemoveAll(root)
		return nil, err
	}
	d := dirs{
		root:           root,
		containerdRoot: filepath.Join(root, "containerd", "root"), containerdState: filepath.Join(root, "containerd", "state"),
		containerdOpt: filepath.Join(root, "containerd", "opt"), containerdSock: filepath.Join(root, "containerd", "containerd.sock"),
		runcRoot: filepath.Join(root, "containerd", "runc"),
		cniBin:   filepath.Join(root, "cni", "bin"), cniConf: filepath.Join(root, "cni", "net.d"), ipam: filepath.Join(root, "cni", "ipam"),
		kubeletRoot: filepath.Join(root, "kubelet"), kubeletCerts: filepath.Join(root, "kubelet-certs"),
		podLogs: filepath.Join(root, "pod-logs"),
		etc:     filepath.Join(root, "etc"), logs: filepath.Join(root, "logs"), images: filepath.Join(root, "images"),
		etcd: filepath.Join(root, "etcd"),
	}
	n := &Node{
		Name: cfg.Name, NodeIP: cfg.NodeIP, PodCIDR: cfg.PodCIDR, Dir: root,
		ContainerdSocket: d.containerdSock, CNIBinDir: d.cniBin, CNIConfDir: d.cniConf,
		Bins: bins, tb: tb, bins: bins, dirs: d, byName: map[string]*proc{},
		cgroup: "kubenode-" + id, network: "kubenode-" + id,
		EtcdEndpoint: fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort),
	}
	// The namespace's cleanup runs after the node's (LIFO): the
	// processes in it are gone by then.
	n.NS = netnstest.New(tb)
	if err := os.WriteFile(filepath.Join(root, netnsFile), []byte(n.NS.Name()), 0o600); err != nil {
		return nil, err
	}
	n.host = snapshotHostDirs()
	tb.Cleanup(n.cleanup)
	for _, p := range []string{d.containerdRoot, d.containerdState, d.containerdOpt, d.runcRoot, d.cniBin, d.cniConf,
		d.ipam, d.kubeletRoot, d.kubeletCerts, d.podLogs, d.etc, d.logs, d.images, d.etcd} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return n, err
		}
	}
	if n.sp, err = newSpawner(n.NS.Path()); err != nil {
		return n, err
	}
	return n, nil
}

// lock takes the machine's kubenode lock for tb's lifetime.
func lock(tb testing.TB) error {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("lock %s: %w", lockFile, err)
	}
	deadline := time.Now().Add(lockTimeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			_ = f.Close()
			return fmt.Errorf("lock %s (another node runs on this machine?): %w", lockFile, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	tb.Cleanup(func() { _ = f.Close() })
	return nil
}

func (n *Node) start(t0 time.Time, cfg Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := n.setupNetwork(); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := n.startEtcd(ctx); err != nil {
		return err
	}
	setup, err := n.startAPIServer(ctx, cfg)
	if err != nil {
		return err
	}
	n.Timings.APIServer = time.Since(t0)
	// The config is there before containerd starts, so its first load
	// finds it.
	if !cfg.NoCNI {
		if err := n.InstallCNI(n.StandardCNI().CNI()); err != nil {
			return err
		}
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if err := n.importImages(ctx); err != nil {
		return err
	}
	if err := n.startControllers(setup, cfg); err != nil {
		return err
	}
	if err := n.startKubelet(setup); err != nil {
		return err
	}
	// ServiceAccount admission refuses pods until the controller manager
	// has made the namespace's default service account.
	if err := poll(ctx, "default service account", n.procNamed("kube-controller-manager"), func() (bool, error) {
		err := n.client.Do(ctx, "GET", "/api/v1/namespaces/default/serviceaccounts/default", "", nil, nil)
		return err == nil, err
	}); err != nil {
		return err
	}
	if cfg.NoCNI {
		return n.waitNodeRegistered(ctx)
	}
	if err := n.WaitReady(ctx); err != nil {
		return err
	}
	n.Timings.NodeReady = time.Since(t0)
	return nil
}

// setupNetwork gives the namespace the node's address and turns on
// forwarding, which the pods' traffic needs (in the node's namespace
// only: the host's stays as it is). The address sits on one end of a
// veth pair whose ends both stay in the namespace (kn-node0, kn-node1):
// this kernel has no dummy interfaces, and the kubelet wants its node IP
// on an interface that is up.
func (n *Node) setupNetwork() error {
	nl := n.NS.Netlink()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kn-node0"}, PeerName: "kn-node1"}
	if err := nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth kn-node0: %w", err)
	}
	bits := 32
	if n.NodeIP.Is6() {
		bits = 128
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(n.NodeIP.AsSlice()), Mask: net.CIDRMask(bits, bits)}}
	if err := nl.AddrAdd(veth, addr); err != nil {
		return fmt.Errorf("address %s: %w", n.NodeIP, err)
	}
	for _, name := range []string{"kn-node0", "kn-node1"} {
		l, err := nl.LinkByName(name)
		if err == nil {
			err = nl.LinkSetUp(l)
		}
		if err != nil {
			return fmt.Errorf("set %s up: %w", name, err)
		}
	}
	n.NS.Sysctl(n.tb, "net.ipv4.ip_forward", "1")
	return nil
}

// env is the environment of the node's processes.
func env() []string {
	var e []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBECONFIG=") {
			e = append(e, kv)
		}
	}
	return e
}

func (n *Node) run(name, bin string, args ...string) (*proc, error) {
	p, err := startProc(n.sp, name, filepath.Join(n.dirs.logs, name+".log"), bin, args, env())
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	n.mu.Lock()
	n.byName[name] = p
	n.mu.Unlock()
	return p, nil
}

func (n *Node) startEtcd(ctx context.Context) error {
	cu := n.EtcdEndpoint
	pu := fmt.Sprintf("http://127.0.0.1:%d", etcdPeerPort)
	p, err := n.run("etcd", n.bins.Etcd,
		"--name", "kubenode", "--data-dir", n.dirs.etcd,
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", "kubenode="+pu, "--log-level", "warn", "--logger", "zap")
	if err != nil {
		return err
	}
	return poll(ctx, "etcd", p, func() (bool, error) {
		c, err := n.Dial(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(etcdClientPort))
		if err != nil {
			return false, err
		}
		_ = c.Close()
		return true, nil
	})
}

// Users of the token file besides the admin: their names are what the
// built-in RBAC bindings and the Node authorizer expect.
const (
	userControllerManager = "system:kube-controller-manager"
	userScheduler         = "system:kube-scheduler"
)

func (n *Node) startAPIServer(ctx context.Context, cfg Config) (kubeapiserver.Setup, error) {
	svc := cfg.ServiceCIDR
	if !svc.IsValid() {
		svc = kubeapiserver.DefaultServiceCIDR
	}
	firstSvc := svc.Masked().Addr().Next()
	n.KubernetesServiceIP = firstSvc
	setup, err := kubeapiserver.Prepare(kubeapiserver.Config{
		Dir: filepath.Join(n.Dir, "apiserver"), EtcdEndpoints: []string{n.EtcdEndpoint},
		ServiceCIDR: svc, ServingIPs: []netip.Addr{n.NodeIP, firstSvc},
		ExtraUsers: []kubeapiserver.Identity{
			{Name: "system:node:" + n.Name, Groups: []string{"system:nodes"}},
			{Name: userControllerManager}, {Name: userScheduler},
		},
	})
	if err != nil {
		return setup, err
	}
	kpki, err := newKubeletPKI(n.dirs.etc, n.Name, n.NodeIP)
	if err != nil {
		return setup, fmt.Errorf("kubelet certificates: %w", err)
	}
	args := setup.Args
	// Inside the node's namespace: every address there is the node's.
	args = setFlag(args, "--bind-address", "0.0.0.0")
	args = setFlag(args, "--advertise-address", n.NodeIP.String())
	args = setFlag(args, "--authorization-mode", "Node,RBAC")
	// A whole cluster: the controller manager makes the service accounts
	// and the endpoints, so admission and the endpoint reconciler run as
	// in production.
	args = dropFlag(args, "--disable-admission-plugins")
	args = dropFlag(args, "--endpoint-reconciler-type")
	args = append(args,
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--kubelet-client-certificate="+kpki.apiserverCert, "--kubelet-client-key="+kpki.apiserverKey,
		"--kubelet-certificate-authority="+kpki.caFile,
		// Makes the apiserver publish extension-apiserver-authentication,
		// which the controller manager and scheduler read.
		"--client-ca-file="+kpki.caFile,
		"--kubelet-preferred-address-types=InternalIP",
	)
	n.kubeletPKI = kpki
	p, err := n.run("kube-apiserver", n.bins.APIServer, args...)
	if err != nil {
		return setup, err
	}
	if n.client, err = kubeapiserver.NewClientDial(setup, n.Dial); err != nil {
		return setup, err
	}
	if err := n.client.WaitReady(ctx, func() bool { return !p.running() }); err != nil {
		return setup, fmt.Errorf("%w; its log ends:\n%s", err, p.logTail(30))
	}
	n.Host, n.CAPEM, n.AdminToken, n.Kubeconfig = setup.Host, setup.CAPEM, setup.AdminToken, setup.Kubeconfig
	return setup, nil
}

// setFlag sets --name=value in args, replacing the flag if it is there.
func setFlag(args []string, name, value string) []string {
	out := dropFlag(args, name)
	return append(out, name+"="+value)
}

// dropFlag removes --name=... from args.
func dropFlag(args []string, name string) []string {
	var out []string
	for _, a := range args {
		if a != name && !strings.HasPrefix(a, name+"=") {
			out = append(out, a)
		}
	}
	return out
}

func (n *Node) startContainerd(ctx context.Context) error {
	conf, err := containerdConfig(ctx, n.bins.Containerd, n.dirs, PauseImage)
	if err != nil {
		return err
	}
	path := filepath.Join(n.dirs.etc, "containerd.toml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return err
	}
	p, err := n.run("containerd", n.bins.Containerd, "--config", path)
	if err != nil {
		return err
	}
	return poll(ctx, "containerd", p, func() (bool, error) {
		_, err := n.ctr(ctx, criNamespace, "version")
		return err == nil, err
	})
}

func (n *Node) startControllers(setup kubeapiserver.Setup, cfg Config) error {
	svc := cfg.ServiceCIDR
	if !svc.IsValid() {
		svc = kubeapiserver.DefaultServiceCIDR
	}
	kc := map[string]string{}
	for _, u := range setup.ExtraUsers {
		file := strings.NewReplacer("system:", "", ":", "-").Replace(u.Name)
		p, err := setup.WriteKubeconfig(file, u.Name, u.Token)
		if err != nil {
			return err
		}
		kc[u.Name] = p
	}
	n.kubeletKubeconfig = kc["system:node:"+n.Name]
	cm := kc[userControllerManager]
	if _, err := n.run("kube-controller-manager", n.bins.ControllerManager,
		"--kubeconfig="+cm, "--authentication-kubeconfig="+cm, "--authorization-kubeconfig="+cm,
		"--bind-address=127.0.0.1", "--secure-port=10257", "--leader-elect=false",
		"--service-account-private-key-file="+setup.ServiceAccountKeyFile, "--root-ca-file="+setup.CAFile,
		"--use-service-account-credentials=true", "--service-cluster-ip-range="+svc.String(),
		"--cert-dir="+filepath.Join(n.Dir, "kcm-certs"), "--v=1"); err != nil {
		return err
	}
	sc := kc[userScheduler]
	_, err := n.run("kube-scheduler", n.bins.Scheduler,
		"--kubeconfig="+sc, "--authentication-kubeconfig="+sc, "--authorization-kubeconfig="+sc,
		"--bind-address=127.0.0.1", "--secure-port=10259", "--leader-elect=false", "--v=1")
	return err
}

// kubeletConfig is the kubelet's configuration (docs/development.md, "The
// real node"): nothing outside the node's directories and cgroup, no
// iptables chains, cgroup v1 allowed, no image garbage collection (the
// images were imported by hand and cannot be pulled again).
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: %[2]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
cgroupRoot: /%[3]s
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://%[4]s
tlsCertFile: %[5]s
tlsPrivateKeyFile: %[6]s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[7]s
authorization:
  mode: Webhook
clusterDomain: cluster.local
resolvConf: %[8]s
podLogsDir: %[9]s
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
makeIPTablesUtilChains: false
`

func (n *Node) startKubelet(setup kubeapiserver.Setup) error {
	if err := makeCgroupRoot(n.cgroup); err != nil {
		return err
	}
	resolv := filepath.Join(n.dirs.etc, "pod-resolv.conf")
	if err := os.WriteFile(resolv, nil, 0o644); err != nil {
		return err
	}
	conf := fmt.Sprintf(kubeletConfig, n.NodeIP, kubeletPort, n.cgroup, n.dirs.containerdSock,
		n.kubeletPKI.servingCert, n.kubeletPKI.servingKey, n.kubeletPKI.caFile, resolv, n.dirs.podLogs)
	path := filepath.Join(n.dirs.etc, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return err
	}
	_, err := n.run("kubelet", n.bins.Kubelet,
		"--config="+path, "--kubeconfig="+n.kubeletKubeconfig,
		"--hostname-override="+n.Name, "--node-ip="+n.NodeIP.String(),
		"--root-dir="+n.dirs.kubeletRoot, "--cert-dir="+n.dirs.kubeletCerts, "--v=2")
	return err
}

// nodeStatus is the part of a Node object the harness reads.
type nodeStatus struct {
	Status struct {
		Conditions []struct{ Type, Status, Reason, Message string }
	}
}

func (n *Node) getNode(ctx context.Context) (nodeStatus, error) {
	var ns nodeStatus
	err := n.client.Do(ctx, "GET", "/api/v1/nodes/"+n.Name, "", nil, &ns)
	return ns, err
}

func (n *Node) waitNodeRegistered(ctx context.Context) error {
	return poll(ctx, "node registered", n.procNamed("kubelet"), func() (bool, error) {
		_, err := n.getNode(ctx)
		return err == nil, err
	})
}

// WaitReady waits until the node's Ready condition is True (up to ctx's
// end), or the kubelet exits.
func (n *Node) WaitReady(ctx context.Context) error {
	return poll(ctx, "node Ready", n.procNamed("kubelet"), func() (bool, error) {
		ns, err := n.getNode(ctx)
		if err != nil {
			return false, err
		}
		for _, c := range ns.Status.Conditions {
			if c.Type == "Ready" {
				if c.Status == "True" {
					return true, nil
				}
				return false, fmt.Errorf("condition Ready=%s %s: %s", c.Status, c.Reason, c.Message)
			}
		}
		return false, errors.New("no Ready condition yet")
	})
}

// Dial connects to address from inside the node's namespace: give it to
// client-go as rest.Config.Dial (with Host, CAPEM and AdminToken) to talk
// to the apiserver from the test process, which stays in the host's
// namespace.
func (n *Node) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	return n.NS.Dial(ctx, net.Dialer{Timeout: 10 * time.Second}, network, address)
}

// Client is the admin's client of the node's apiserver (package
// kubeapiserver's, through Dial).
func (n *Node) Client() *kubeapiserver.Client { return n.client }

// Kubectl runs the node's kubectl as the admin inside the node's
// namespace and returns its combined output; a failure's error holds the
// output too.
func (n *Node) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	a := append([]string{"--kubeconfig=" + n.Kubeconfig, "--cache-dir=" + filepath.Join(n.Dir, "kubectl-cache")}, args...)
	cmd := exec.CommandContext(ctx, n.bins.Kubectl, a...)
	cmd.Env = env()
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := n.sp.start(cmd); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	if err != nil {
		return []byte(out.String()), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return []byte(out.String()), nil
}

// StartProcess runs bin with args inside the node's namespace as one of
// its daemons (mesh-agent, mesh-controlplane), with its output in
// <Dir>/logs/<name>.log (Log). Cleanup stops it (SIGTERM, then SIGKILL)
// after the pods are gone and before the kubelet. The process dies with
// the test binary.
func (n *Node) StartProcess(name, bin string, args ...string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.byName[name]; ok {
		return fmt.Errorf("kubenode: a process named %s runs already: pick another name", name)
	}
	p, err := startProc(n.sp, name, filepath.Join(n.dirs.logs, name+".log"), bin, args, env())
	if err != nil {
		return err
	}
	n.extra = append(n.extra, p)
	n.byName[name] = p
	return nil
}

// procNamed returns the node's process name, or nil.
func (n *Node) procNamed(name string) *proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.byName[name]
}

// Log returns the log so far of the node's process name: etcd,
// kube-apiserver, containerd, kube-controller-manager, kube-scheduler,
// kubelet, or one of StartProcess.
func (n *Node) Log(name string) string {
	b, _ := os.ReadFile(filepath.Join(n.dirs.logs, name+".log"))
	return string(b)
}

// PodIPAllocations are the pod IPs that the standard network's
// host-local IPAM holds now.
func (n *Node) PodIPAllocations() ([]netip.Addr, error) {
	ents, err := os.ReadDir(filepath.Join(n.dirs.ipam, n.network))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, e := range ents {
		if a, err := netip.ParseAddr(e.Name()); err == nil {
			ips = append(ips, a)
		}
	}
	return ips, nil
}

// podsGoneTimeout bounds cleanup's wait for the kubelet to tear the pods
// down (CNI DEL, the sandboxes' namespaces).
const podsGoneTimeout = 90 * time.Second

// cleanup stops and removes everything of the node, in an order that
// lets each part undo its own work: no new pods (controller manager,
// scheduler), the pods deleted through the kubelet (so the CNI plugin's
// DEL runs), the test's processes, the kubelet, what containers remain,
// containerd and its shims, the apiserver and etcd; then the mounts, the
// cgroups, the host paths and the directory. The namespace goes last
// (netnstest's cleanup).
func (n *Node) cleanup() {
	if n.tb.Failed() {
		n.mu.Lock()
		all := append(append([]*proc(nil), n.procs...), n.extra...)
		n.mu.Unlock()
		for _, p := range all {
			n.tb.Logf("kubenode: the log of %s ends:\n%s", p.name, p.logTail(25))
		}
	}
	var errs []error
	stop := func(name string) {
		if p := n.procNamed(name); p != nil {
			p.stop(10 * time.Second)
		}
	}
	stop("kube-controller-manager")
	stop("kube-scheduler")
	if kl := n.procNamed("kubelet"); kl != nil && kl.running() && n.procNamed("kube-apiserver").running() {
		if err := n.deletePods(); err != nil {
			errs = append(errs, err)
		}
	}
	n.mu.Lock()
	extra := n.extra
	n.mu.Unlock()
	for i := len(extra) - 1; i >= 0; i-- {
		extra[i].stop(10 * time.Second)
	}
	stop("kubelet")
	if p := n.procNamed("containerd"); p != nil && p.running() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		paths, err := n.removeContainers(ctx)
		cancel()
		if err != nil {
			errs = append(errs, err)
		}
		for _, p := range paths {
			if err := removeNetns(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for i := len(n.procs) - 1; i >= 0; i-- {
		n.procs[i].stop(10 * time.Second)
	}
	killShims(n.dirs.containerdSock)
	if n.sp != nil {
		n.sp.close()
	}
	if n.client != nil {
		n.client.Close()
	}
	if err := unmountUnder(n.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroupRoot(n.cgroup); err != nil {
		errs = append(errs, err)
	}
	if n.host != nil {
		if err := n.host.clean(n.dirs.podLogs, n.network); err != nil {
			errs = append(errs, err)
		}
	}
	if keep := os.Getenv(LogsEnv); keep != "" {
		if err := n.keepLogs(keep); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(n.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		n.tb.Errorf("kubenode cleanup: %v", err)
	}
}

// ProxyKubernetesService makes the kubernetes Service's ClusterIP (the
// service range's first address, port 443) reach the apiserver, for pods
// and host-network pods that use the in-cluster config: the node runs no
// kube-proxy. It adds two DNAT rules to the nat table of the node's
// namespace (not the host's), which go with the namespace. A test whose
// own service datapath should carry that Service does not call it.
func (n *Node) ProxyKubernetesService(ctx context.Context) error {
	port := n.Host[strings.LastIndex(n.Host, ":")+1:]
	to := net.JoinHostPort(n.NodeIP.String(), port)
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		out, err := n.NS.Exec(ctx, "iptables", "-w", "-t", "nat", "-A", chain, "-d", n.KubernetesServiceIP.String()+"/32",
			"-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination", to)
		if err != nil {
			return fmt.Errorf("kubenode: DNAT %s:443 to %s (%s): %w: %s", n.KubernetesServiceIP, to, chain, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// LogsEnv names a directory that cleanup copies the node's logs into
// (<dir>/<cgroup root name>/<process>.log), to read after the test.
const LogsEnv = "MESHPLANE_KUBENODE_LOGS"

func (n *Node) keepLogs(dir string) error {
	dst := filepath.Join(dir, n.cgroup)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(n.dirs.logs)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := copyFile(filepath.Join(dst, e.Name()), filepath.Join(n.dirs.logs, e.Name()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// deletePods deletes every pod and waits until containerd runs none of
// their tasks: the kubelet has stopped their sandboxes then, which runs
// the CNI plugin's DEL and removes their network namespaces.
func (n *Node) deletePods() error {
	ctx, cancel := context.WithTimeout(context.Background(), podsGoneTimeout)
	defer cancel()
	if out, err := n.Kubectl(ctx, "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false"); err != nil {
		return fmt.Errorf("delete pods: %w: %s", err, out)
	}
	return poll(ctx, "pods torn down", n.procNamed("kubelet"), func() (bool, error) {
		out, err := n.ctr(ctx, criNamespace, "tasks", "ls", "-q")
		if err != nil {
			return false, err
		}
		if len(strings.Fields(string(out))) > 0 {
			return false, fmt.Errorf("tasks left: %s", strings.Join(strings.Fields(string(out)), " "))
		}
		var list struct{ Items []json.RawMessage }
		if err := n.client.Do(ctx, "GET", "/api/v1/pods", "", nil, &list); err != nil {
			return false, err
		}
		return len(list.Items) == 0, fmt.Errorf("%d pods left", len(list.Items))
	})
}
