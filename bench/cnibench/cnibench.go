package cnibench

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/internal/netnsfile"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/embedded"
	"github.com/meshplane/meshplane/nodeagent"
	"github.com/meshplane/meshplane/pod"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("cnibench: invalid configuration")

// ErrHostNetns is returned by Run in the machine's own network namespace:
// it creates interfaces and routes, and must run in one of its own.
var ErrHostNetns = errors.New("cnibench: runs only in a fresh network namespace (nothing but lo; meshctl bench cni makes one), never in the host's")

// Limits of Config's counts.
const (
	MaxPods     = 2000
	MaxParallel = 64
)

// Config configures a run. Zero values are documented with each field.
type Config struct {
	// Pods is the number of pods of each phase: 1 to MaxPods.
	Pods int
	// Parallel is how many CNI commands run at once: 1 to MaxParallel;
	// zero means 10.
	Parallel int
	// Plugin is the mesh-cni binary; required.
	Plugin string
	// Datapath is the agent's (nodeagent.DatapathEBPF or DatapathNone);
	// empty means eBPF: the programs are attached to each pod's veth.
	Datapath string
	// Attach is the eBPF datapath's attachment mode (bpf.AttachTC or
	// AttachTCX, mesh-agent's --datapath-attach); empty means tc.
	Attach bpf.AttachMode
	// Dir holds etcd's data and the agent's state; empty means a new
	// temporary directory, removed at the end.
	Dir string
	// Timeout bounds each phase; zero means 1 minute plus 200ms a pod.
	Timeout time.Duration
	// Progress, if set, is told what the run is doing, a line at a time.
	Progress func(string)
}

// Validate checks the counts.
func (c Config) Validate() error {
	switch {
	case c.Pods < 1 || c.Pods > MaxPods:
		return fmt.Errorf("%w: %d pods: use 1 to %d", ErrConfig, c.Pods, MaxPods)
	case c.Parallel < 0 || c.Parallel > MaxParallel:
		return fmt.Errorf("%w: parallel %d: use 1 to %d", ErrConfig, c.Parallel, MaxParallel)
	case c.Plugin == "":
		return fmt.Errorf("%w: no mesh-cni binary: build it (make build) or pass its path", ErrConfig)
	case c.Datapath != "" && c.Datapath != nodeagent.DatapathEBPF && c.Datapath != nodeagent.DatapathNone:
		return fmt.Errorf("%w: datapath %q: use %s or %s", ErrConfig, c.Datapath, nodeagent.DatapathEBPF, nodeagent.DatapathNone)
	case c.Attach != "" && c.Attach != bpf.AttachTC && c.Attach != bpf.AttachTCX:
		return fmt.Errorf("%w: attach mode %q: use %s or %s", ErrConfig, c.Attach, bpf.AttachTC, bpf.AttachTCX)
	case c.Timeout < 0:
		return fmt.Errorf("%w: timeout %s: use a positive duration", ErrConfig, c.Timeout)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Parallel == 0 {
		c.Parallel = 10
	}
	if c.Datapath == "" {
		c.Datapath = nodeagent.DatapathEBPF
	}
	if c.Attach == "" {
		c.Attach = bpf.AttachTC
	}
	if c.Timeout == 0 {
		c.Timeout = time.Minute + time.Duration(c.Pods)*200*time.Millisecond
	}
	if c.Progress == nil {
		c.Progress = func(string) {}
	}
	return c
}

// Report is what a run measured. The first figures are for pods that each
// have a label set of their own (a new identity per ADD: one etcd
// transaction more); the known_* ones for pods that share one label set
// whose identity the agent already holds.
type Report struct {
	Pods     int     `json:"pods"`
	Parallel int     `json:"parallel"`
	Datapath string  `json:"datapath"`
	Attach   string  `json:"attach"`
	AddP50MS float64 `json:"add_p50_ms"`
	AddP99MS float64 `json:"add_p99_ms"`
	AddMaxMS float64 `json:"add_max_ms"`
	DelP50MS float64 `json:"del_p50_ms"`
	DelP99MS float64 `json:"del_p99_ms"`
	PodsPerS float64 `json:"pods_per_s"`

	KnownAddP50MS float64 `json:"known_add_p50_ms"`
	KnownAddP99MS float64 `json:"known_add_p99_ms"`
	KnownAddMaxMS float64 `json:"known_add_max_ms"`
	KnownDelP50MS float64 `json:"known_del_p50_ms"`
	KnownDelP99MS float64 `json:"known_del_p99_ms"`
	KnownPodsPerS float64 `json:"known_pods_per_s"`

	// Where an ADD's CPU goes, mean per ADD: the plugin process's (user
	// and system, from its rusage) and this process's during the phase's
	// ADDs (the agent, the embedded etcd and the harness together,
	// kernel work in their system calls included).
	AddPluginCPUMS      float64 `json:"add_plugin_cpu_ms"`
	AddAgentCPUMS       float64 `json:"add_agent_cpu_ms"`
	KnownAddPluginCPUMS float64 `json:"known_add_plugin_cpu_ms"`
	KnownAddAgentCPUMS  float64 `json:"known_add_agent_cpu_ms"`
}

// phase is one phase's figures.
type phase struct {
	addP50, addP99, addMax, delP50, delP99, podsPerS float64
	addPluginCPU, addAgentCPU                        float64
}

// run is one run's state.
type run struct {
	cfg     Config
	dir     string
	etcd    *embedded.Server
	client  *kvstore.Client
	keys    kvstore.Keys
	node    string
	socket  string
	netnses []string // pod netns names, for the cleanup
}

const namespace = "bench"

// Run measures ADD and DEL through the plugin binary against an agent in
// this process (see doc.go). It must run in a network namespace of its
// own.
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	if err := cfg.Validate(); err != nil {
		return rep, err
	}
	cfg = cfg.withDefaults()
	if own, err := ownNetns(); err != nil {
		return rep, err
	} else if !own {
		return rep, ErrHostNetns
	}
	if _, err := os.Stat(cfg.Plugin); err != nil {
		return rep, fmt.Errorf("%w: mesh-cni binary: %w", ErrConfig, err)
	}
	rep = Report{Pods: cfg.Pods, Parallel: cfg.Parallel, Datapath: cfg.Datapath}
	if cfg.Datapath == nodeagent.DatapathEBPF {
		rep.Attach = string(cfg.Attach)
	}
	r := &run{cfg: cfg, dir: cfg.Dir, node: fmt.Sprintf("cnibench-%d", os.Getpid())}
	if r.dir == "" {
		if r.dir, err = os.MkdirTemp("", "cnibench-"); err != nil {
			return rep, err
		}
		defer func() { _ = os.RemoveAll(r.dir) }()
	}
	defer func() { err = errors.Join(err, r.deleteNetnses()) }()
	if err := loUp(); err != nil {
		return rep, err
	}
	cfg.Progress("starting etcd")
	if r.etcd, err = embedded.Start(ctx, r.dir, [2]int{}); err != nil {
		return rep, fmt.Errorf("cnibench: start etcd: %w", err)
	}
	defer r.etcd.Close()
	if r.client, err = kvstore.New(ctx, r.etcd.Config()); err != nil {
		return rep, fmt.Errorf("cnibench: connect to etcd: %w", err)
	}
	defer func() { _ = r.client.Close() }()
	cluster := "cnibench"
	if r.keys, err = kvstore.NewKeys(cluster); err != nil {
		return rep, err
	}
	cfg.Progress("starting the agent (" + cfg.Datapath + " datapath, " + string(cfg.Attach) + " attach)")
	stop, err := r.startAgent(ctx, cluster)
	if err != nil {
		return rep, err
	}
	defer func() { err = errors.Join(err, stop()) }()
	if err := r.putNamespace(ctx); err != nil {
		return rep, err
	}
	cfg.Progress(fmt.Sprintf("creating %d pod namespaces", 2*cfg.Pods+1))
	if err := r.makeNetnses(2*cfg.Pods + 1); err != nil {
		return rep, err
	}

	cfg.Progress(fmt.Sprintf("phase 1: %d pods, a new identity each, %d in parallel", cfg.Pods, cfg.Parallel))
	p, err := r.phase(ctx, 0, func(i int) map[string]string { return map[string]string{"app": fmt.Sprintf("new-%d", i)} })
	if err != nil {
		return rep, err
	}
	rep.AddP50MS, rep.AddP99MS, rep.AddMaxMS, rep.DelP50MS, rep.DelP99MS, rep.PodsPerS = p.addP50, p.addP99, p.addMax, p.delP50, p.delP99, p.podsPerS
	rep.AddPluginCPUMS, rep.AddAgentCPUMS = p.addPluginCPU, p.addAgentCPU

	// The known identity: a first pod takes it and keeps it through the
	// phase, as the first replica of a Deployment does.
	cfg.Progress(fmt.Sprintf("phase 2: %d pods of one known identity, %d in parallel", cfg.Pods, cfg.Parallel))
	known := map[string]string{"app": "known"}
	warm := 2 * cfg.Pods
	if err := r.putPod(ctx, warm, known); err != nil {
		return rep, err
	}
	if _, _, err := r.cni(ctx, "ADD", warm); err != nil {
		return rep, err
	}
	p, err = r.phase(ctx, cfg.Pods, func(int) map[string]string { return known })
	if err != nil {
		return rep, err
	}
	if _, _, err := r.cni(ctx, "DEL", warm); err != nil {
		return rep, err
	}
	rep.KnownAddP50MS, rep.KnownAddP99MS, rep.KnownAddMaxMS, rep.KnownDelP50MS, rep.KnownDelP99MS, rep.KnownPodsPerS = p.addP50, p.addP99, p.addMax, p.delP50, p.delP99, p.podsPerS
	rep.KnownAddPluginCPUMS, rep.KnownAddAgentCPUMS = p.addPluginCPU, p.addAgentCPU
	return rep, nil
}

// phase adds pods first..first+Pods-1 (their metadata written first, as
// the control plane does when the pods are scheduled), then deletes them,
// Parallel at a time, and times each command.
func (r *run) phase(ctx context.Context, first int, labels func(i int) map[string]string) (phase, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	idx := make([]int, r.cfg.Pods)
	for j := range idx {
		idx[j] = first + j
		if err := r.putPod(ctx, idx[j], labels(idx[j])); err != nil {
			return phase{}, err
		}
	}
	start, self := time.Now(), selfCPU()
	adds, pluginCPU, err := r.parallel(ctx, "ADD", idx)
	wall, agentCPU := time.Since(start), selfCPU()-self
	if err != nil {
		return phase{}, err
	}
	dels, _, err := r.parallel(ctx, "DEL", idx)
	if err != nil {
		return phase{}, err
	}
	n := float64(len(idx))
	return phase{
		addP50: pct(adds, 0.50), addP99: pct(adds, 0.99), addMax: pct(adds, 1),
		delP50: pct(dels, 0.50), delP99: pct(dels, 0.99),
		podsPerS:     n / wall.Seconds(),
		addPluginCPU: ms(pluginCPU) / n, addAgentCPU: ms(agentCPU) / n,
	}, nil
}

// selfCPU is this process's CPU time so far, user and system.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// parallel runs cmd for every pod of idx, Parallel at a time, and returns
// the durations and the plugin processes' CPU time.
func (r *run) parallel(ctx context.Context, cmd string, idx []int) ([]time.Duration, time.Duration, error) {
	var (
		mu   sync.Mutex
		out  []time.Duration
		cpu  time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	work := make(chan int)
	for range r.cfg.Parallel {
		wg.Go(func() {
			for i := range work {
				d, used, err := r.cni(ctx, cmd, i)
				mu.Lock()
				cpu += used
				if err != nil {
					errs = append(errs, err)
				} else {
					out = append(out, d)
				}
				mu.Unlock()
			}
		})
	}
	for _, i := range idx {
		work <- i
	}
	close(work)
	wg.Wait()
	return out, cpu, errors.Join(errs...)
}

// cni execs the plugin for pod i, as a runtime does, and times it; it
// returns the plugin process's CPU time too.
func (r *run) cni(ctx context.Context, cmd string, i int) (time.Duration, time.Duration, error) {
	name := podName(i)
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"meshplane","type":"mesh-cni","socket":%q}`, r.socket)
	c := exec.CommandContext(ctx, r.cfg.Plugin)
	c.Env = []string{
		"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + containerID(i), "CNI_IFNAME=eth0",
		"CNI_NETNS=" + filepath.Join("/run/netns", r.netnses[i]), "CNI_PATH=" + filepath.Dir(r.cfg.Plugin),
		fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s", namespace, name, containerID(i)),
	}
	var stdout, stderr bytes.Buffer
	c.Stdin, c.Stdout, c.Stderr = bytes.NewReader([]byte(conf)), &stdout, &stderr
	start := time.Now()
	err := c.Run()
	d := time.Since(start)
	var cpu time.Duration
	if c.ProcessState != nil {
		cpu = c.ProcessState.UserTime() + c.ProcessState.SystemTime()
	}
	if err != nil {
		return d, cpu, fmt.Errorf("cnibench: %s %s/%s: %w: %s%s", cmd, namespace, name, err, stdout.String(), stderr.String())
	}
	return d, cpu, nil
}

func podName(i int) string     { return fmt.Sprintf("pod-%d", i) }
func containerID(i int) string { return fmt.Sprintf("cnibench%056d", i) }

func (r *run) putPod(ctx context.Context, i int, l map[string]string) error {
	b, err := pod.Pod{Namespace: namespace, Name: podName(i), Node: r.node, Labels: l}.Encode()
	if err != nil {
		return err
	}
	return r.client.Put(ctx, r.keys.Pod(r.node, namespace, podName(i)), b)
}

func (r *run) putNamespace(ctx context.Context) error {
	b, err := pod.Namespace{Name: namespace}.Encode()
	if err != nil {
		return err
	}
	return r.client.Put(ctx, r.keys.Namespace(namespace), b)
}

// startAgent runs the node's agent in this process and waits until it is
// ok; stop stops it and removes its pins.
func (r *run) startAgent(ctx context.Context, cluster string) (stop func() error, err error) {
	if _, err := bpf.MountFS(bpf.DefaultDir); err != nil {
		return nil, fmt.Errorf("cnibench: the agent needs eBPF (run as root): %w", err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	r.socket = filepath.Join(r.dir, "agent.sock")
	cfg := nodeagent.Config{
		Node: r.node, Cluster: cluster, ClusterID: 1, Etcd: r.etcd.Config(),
		StateDir:   filepath.Join(r.dir, "agent"),
		NodeIPs:    []netip.Addr{netip.MustParseAddr("127.0.9.1")},
		GossipAddr: netip.MustParseAddr("127.0.0.1"), GossipPort: -1, GossipKeys: [][]byte{key},
		APISocket: r.socket, APISocketGroup: -1,
		Datapath: r.cfg.Datapath,
		BPF:      bpf.Config{Attach: r.cfg.Attach},
		// One node: there is no other node to route to.
		RoutingMode: nodeagent.RoutingNone,
	}
	a, err := nodeagent.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("cnibench: agent: %w", err)
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		var err error
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			err = errors.New("cnibench: the agent did not stop within 30s")
		}
		if left := a.Endpoints(); len(left) > 0 {
			err = errors.Join(err, fmt.Errorf("cnibench: %d endpoints left in the agent after the run", len(left)))
		}
		return errors.Join(err, bpf.RemovePins(bpf.Config{Node: r.node}))
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for a.Status().State != nodeagent.StateOK {
		select {
		case <-wctx.Done():
			st := a.Status()
			return nil, errors.Join(fmt.Errorf("cnibench: agent not ok: %s %v: %w", st.State, st.Reasons, wctx.Err()), stop())
		case <-t.C:
		}
	}
	return stop, nil
}

// makeNetnses creates n named network namespaces for the pods (as a
// runtime does before ADD), each on a thread that is retired afterwards.
func (r *run) makeNetnses(n int) error {
	for i := range n {
		name := fmt.Sprintf("mp-cnibench-%d-%d", os.Getpid(), i)
		if err := NewNetns(name); err != nil {
			return err
		}
		r.netnses = append(r.netnses, name)
	}
	return nil
}

func (r *run) deleteNetnses() error {
	var errs []error
	for _, n := range r.netnses {
		errs = append(errs, DeleteNetns(n))
	}
	r.netnses = nil
	return errors.Join(errs...)
}

// NewNetns creates a named network namespace (/run/netns/<name>, as `ip
// netns add` does) with its loopback up.
func NewNetns(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread is in the new namespace; the
		// runtime retires it with the goroutine.
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("cnibench: netns %s: %w", name, err)
			return
		}
		_ = h.Close()
		errc <- loUp()
	}()
	return <-errc
}

// DeleteNetns deletes a namespace NewNetns made; a missing one is fine.
func DeleteNetns(name string) error {
	if err := netnsfile.Delete(filepath.Join(netnsfile.Dir, name)); err != nil {
		return fmt.Errorf("cnibench: delete netns %s: %w", name, err)
	}
	return nil
}

// loUp sets the loopback of the calling thread's namespace up.
func loUp() error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("cnibench: netlink: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("cnibench: set lo up: %w", err)
	}
	return nil
}

// ownNetns reports whether this process's network namespace is a fresh
// one: nothing in it but lo (the host's, or anyone else's, has more).
func ownNetns() (bool, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return false, fmt.Errorf("cnibench: list links: %w", err)
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			return false, nil
		}
	}
	return true, nil
}

// pct is the q-th quantile of ds in milliseconds (nearest rank).
func pct(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := max(int(math.Ceil(q*float64(len(s))))-1, 0)
	return math.Round(float64(s[i].Microseconds())/10) / 100
}
