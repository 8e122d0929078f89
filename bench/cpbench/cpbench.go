package cpbench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/controlplane/k8s"
	"github.com/meshplane/meshplane/kubeapiserver"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/embedded"
	"github.com/meshplane/meshplane/pod"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("cpbench: invalid configuration")

// Config configures a run. Zero values are documented with each field.
type Config struct {
	// Pods is the number of pods to create: 1 to MaxPods.
	Pods int
	// Namespaces holds the pods: 1 to MaxNamespaces; zero means 10 (or
	// Pods, when fewer).
	Namespaces int
	// Services is the number of services, spread over the namespaces: 0
	// to MaxServices. Negative means none; zero means Pods/10.
	Services int
	// Nodes is the number of fake node names the pods are spread over:
	// 1 to MaxNodes; zero means 4.
	Nodes int
	// Clients is the number of concurrent creators: 1 to MaxClients;
	// zero means 32.
	Clients int
	// Relabels is the number of label changes timed: 1 to MaxRelabels;
	// zero means 50 (or the pods of the agent's node, when fewer).
	Relabels int
	// Agent runs a node agent (it needs root and a bpffs) and times
	// relabels to its endpoints map; false times them to etcd only.
	Agent bool
	// APIServer is the kube-apiserver binary; empty means kubeapiserver.Find's.
	APIServer string
	// Dir holds etcd's data, the apiserver's files and the agent's state;
	// empty means a new temporary directory. It is removed at the end
	// when Run made it.
	Dir string
	// Timeout bounds each phase. Zero means 2 minutes plus 20ms a pod.
	Timeout time.Duration
	// Progress, if set, is told what the run is doing, a line at a time.
	Progress func(string)
}

// Limits of Config's counts.
const (
	MaxPods       = 100_000
	MaxNamespaces = 1000
	MaxServices   = 20_000
	MaxNodes      = 1000
	MaxClients    = 256
	MaxRelabels   = 1000
)

// Validate checks the counts.
func (c Config) Validate() error {
	switch {
	case c.Pods < 1 || c.Pods > MaxPods:
		return fmt.Errorf("%w: %d pods: use 1 to %d", ErrConfig, c.Pods, MaxPods)
	case c.Namespaces < 0 || c.Namespaces > MaxNamespaces:
		return fmt.Errorf("%w: %d namespaces: use 1 to %d (0 for the default)", ErrConfig, c.Namespaces, MaxNamespaces)
	case c.Services > MaxServices:
		return fmt.Errorf("%w: %d services: use 0 to %d", ErrConfig, c.Services, MaxServices)
	case c.Nodes < 0 || c.Nodes > MaxNodes:
		return fmt.Errorf("%w: %d nodes: use 1 to %d", ErrConfig, c.Nodes, MaxNodes)
	case c.Clients < 0 || c.Clients > MaxClients:
		return fmt.Errorf("%w: %d clients: use 1 to %d", ErrConfig, c.Clients, MaxClients)
	case c.Relabels < 0 || c.Relabels > MaxRelabels:
		return fmt.Errorf("%w: %d relabels: use 1 to %d", ErrConfig, c.Relabels, MaxRelabels)
	case c.Timeout < 0:
		return fmt.Errorf("%w: timeout %s: use a positive duration", ErrConfig, c.Timeout)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Namespaces == 0 {
		c.Namespaces = min(10, c.Pods)
	}
	switch {
	case c.Services == 0:
		c.Services = c.Pods / 10
	case c.Services < 0:
		c.Services = 0
	}
	if c.Nodes == 0 {
		c.Nodes = 4
	}
	if c.Clients == 0 {
		c.Clients = 32
	}
	if c.Relabels == 0 {
		c.Relabels = 50
	}
	// The relabelled pods are the agent's (node 0's) pods.
	c.Relabels = min(c.Relabels, (c.Pods+c.Nodes-1)/c.Nodes)
	if c.Timeout == 0 {
		c.Timeout = 2*time.Minute + time.Duration(c.Pods)*20*time.Millisecond
	}
	if c.Progress == nil {
		c.Progress = func(string) {}
	}
	return c
}

// Report is the result of a run; the JSON names are the interface that
// scripts read (and the table's rows).
type Report struct {
	Pods       int `json:"pods"`
	Namespaces int `json:"namespaces"`
	Services   int `json:"services"`
	Nodes      int `json:"nodes"`
	Clients    int `json:"clients"`
	// Creation: how fast the apiserver took the pods.
	CreateS       float64 `json:"create_s"`
	CreatesPerS   float64 `json:"creates_per_s"`
	CreateP99MS   float64 `json:"create_p99_ms"`
	AllInEtcdS    float64 `json:"all_in_etcd_s"`
	LagP50MS      float64 `json:"lag_p50_ms"`
	LagP99MS      float64 `json:"lag_p99_ms"`
	LagMaxMS      float64 `json:"lag_max_ms"`
	InformerP50MS float64 `json:"informer_lag_p50_ms"`
	InformerP99MS float64 `json:"informer_lag_p99_ms"`
	WriteP50MS    float64 `json:"write_lag_p50_ms"`
	WriteP99MS    float64 `json:"write_lag_p99_ms"`
	Events        int64   `json:"events"`
	EventsPerS    float64 `json:"events_per_s"`
	// Watches: the control plane's, and by resource.
	APIServerWatches   int    `json:"apiserver_watches"`
	APIServerWatchedBy string `json:"apiserver_watches_by_resource"`
	// Relabel: to the agent's endpoints map (RelabelTo says where the
	// figures were taken) and to etcd.
	Relabels         int     `json:"relabels"`
	RelabelTo        string  `json:"relabel_to"`
	RelabelP50MS     float64 `json:"relabel_p50_ms"`
	RelabelP99MS     float64 `json:"relabel_p99_ms"`
	RelabelEtcdP50MS float64 `json:"relabel_etcd_p50_ms"`
	RelabelEtcdP99MS float64 `json:"relabel_etcd_p99_ms"`
	// InitialSyncS: a fresh control plane, from start until every pod is
	// in an emptied pods/ prefix again.
	InitialSyncS float64 `json:"initial_sync_s"`
}

// Where RelabelTo says relabels were timed to.
const (
	RelabelToDatapath = "endpoints map"
	RelabelToEtcd     = "etcd (no agent: not to the datapath)"
)

// run is one run's state.
type run struct {
	cfg     Config
	cluster string
	keys    kvstore.Keys
	dir     string
	etcd    *embedded.Server
	client  *kvstore.Client
	kube    *kubeapiserver.Server
	api     *apiClient
	nodes   []string
	ns      []string
	pods    *podWatch
	notes   *notifications
	rep     Report
}

// Run runs the benchmark (see the package doc). It returns what it
// measured so far with the error of a phase that failed.
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	if err := cfg.Validate(); err != nil {
		return rep, err
	}
	cfg = cfg.withDefaults()
	suffix := randomSuffix(6)
	r := &run{cfg: cfg, cluster: "cpbench-" + suffix}
	r.rep = Report{Pods: cfg.Pods, Namespaces: cfg.Namespaces, Services: cfg.Services, Nodes: cfg.Nodes, Clients: cfg.Clients}
	r.keys, err = kvstore.NewKeys(r.cluster)
	if err != nil {
		return rep, err
	}
	for i := range cfg.Nodes {
		r.nodes = append(r.nodes, fmt.Sprintf("cpbench-%s-%d", suffix, i))
	}
	for i := range cfg.Namespaces {
		r.ns = append(r.ns, fmt.Sprintf("cpbench-%d", i))
	}
	var cleanups []func() error
	defer func() {
		var cerr error
		for _, f := range slices.Backward(cleanups) {
			cerr = errors.Join(cerr, f())
		}
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("cpbench: clean up: %w", cerr))
		}
		rep = r.rep
	}()
	cleanup := func(f func() error) { cleanups = append(cleanups, f) }

	r.dir = cfg.Dir
	if r.dir == "" {
		if r.dir, err = os.MkdirTemp("", "cpbench-"); err != nil {
			return rep, fmt.Errorf("cpbench: %w", err)
		}
		cleanup(func() error { return os.RemoveAll(r.dir) })
	}
	cfg.Progress("starting etcd and kube-apiserver")
	if r.etcd, err = embedded.Start(ctx, r.dir, [2]int{}); err != nil {
		return rep, fmt.Errorf("cpbench: start etcd: %w", err)
	}
	cleanup(func() error { r.etcd.Close(); return nil })
	if r.client, err = kvstore.New(ctx, r.etcd.Config()); err != nil {
		return rep, fmt.Errorf("cpbench: connect to etcd: %w", err)
	}
	cleanup(r.client.Close)
	kubeDir := r.dir + "/kube-apiserver"
	if err := os.MkdirAll(kubeDir, 0o700); err != nil {
		return rep, fmt.Errorf("cpbench: %w", err)
	}
	if r.kube, err = kubeapiserver.Start(kubeapiserver.Config{Binary: cfg.APIServer, Dir: kubeDir, EtcdEndpoints: []string{r.etcd.ClientURL()}}); err != nil {
		return rep, fmt.Errorf("cpbench: start kube-apiserver: %w", err)
	}
	cleanup(func() error { r.kube.Stop(); return nil })
	if r.api, err = newAPIClient(r.kube, cfg.Clients); err != nil {
		return rep, err
	}
	cleanup(func() error { r.api.close(); return nil })

	// The watch of pods/: when each pod's key appears, and its labels.
	wctx, wcancel := context.WithCancel(ctx)
	r.pods, err = watchPods(wctx, r.client, r.keys)
	if err != nil {
		wcancel()
		return rep, err
	}
	cleanup(func() error { wcancel(); return r.pods.wait() })

	before, err := r.api.watches(ctx)
	if err != nil {
		return rep, err
	}
	cfg.Progress("starting the control plane")
	r.notes = newNotifications()
	stopCP, err := r.startControlPlane(ctx, r.notes)
	if err != nil {
		return rep, err
	}
	cpStopped := false
	cleanup(func() error {
		if cpStopped {
			return nil
		}
		return stopCP()
	})

	var agent *benchAgent
	if cfg.Agent {
		cfg.Progress("starting the agent of node " + r.nodes[0])
		if agent, err = startAgent(ctx, r); err != nil {
			return rep, err
		}
		cleanup(agent.stop)
	}

	if err := r.createAll(ctx); err != nil {
		return rep, err
	}
	// The control plane's watches, now that every informer has listed
	// and watched for a while.
	after, err := r.api.watches(ctx)
	if err != nil {
		return rep, err
	}
	r.rep.APIServerWatches, r.rep.APIServerWatchedBy = after.minus(before)

	if err := r.relabel(ctx, agent); err != nil {
		return rep, err
	}

	// Cold start.
	if agent != nil {
		if err := agent.stop(); err != nil {
			return rep, err
		}
	}
	cpStopped = true
	if err := stopCP(); err != nil {
		return rep, err
	}
	if err := r.coldStart(ctx); err != nil {
		return rep, err
	}
	return rep, nil
}

// startControlPlane starts a control plane with a Kubernetes source whose
// notifications notes records; stop stops it and waits for it.
func (r *run) startControlPlane(ctx context.Context, notes *notifications) (stop func() error, err error) {
	src, err := k8s.New(k8s.Config{Kubeconfig: r.kube.Kubeconfig})
	if err != nil {
		return nil, fmt.Errorf("cpbench: kubernetes source: %w", err)
	}
	cp, err := controlplane.New(controlplane.Config{
		Client: r.client, Cluster: r.cluster, ClusterID: 1, Source: &countingSource{Source: src, notes: notes}, // ClusterID: its agents'
		Name: "cpbench", GCInterval: -1,
	})
	if err != nil {
		return nil, fmt.Errorf("cpbench: control plane: %w", err)
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- cp.Run(cctx) }()
	return func() error {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("cpbench: control plane: %w", err)
			}
			return nil
		case <-time.After(30 * time.Second):
			return errors.New("cpbench: the control plane did not stop within 30s")
		}
	}, nil
}

// countingSource passes a Source's notifications on, recording them.
type countingSource struct {
	controlplane.Source
	notes *notifications
}

func (s *countingSource) Run(ctx context.Context, notify controlplane.Notify) error {
	return s.Source.Run(ctx, func(kind controlplane.Kind, key string) {
		s.notes.add(kind, key)
		notify(kind, key)
	})
}

// notifications records the control plane's notifications: how many, and
// when each pod's first came.
type notifications struct {
	count atomic.Int64
	mu    sync.Mutex
	pods  map[string]time.Time // "<namespace>/<name>": first notification
}

func newNotifications() *notifications {
	return &notifications{pods: map[string]time.Time{}}
}

func (n *notifications) add(kind controlplane.Kind, key string) {
	n.count.Add(1)
	if kind != controlplane.KindPod {
		return
	}
	now := time.Now()
	n.mu.Lock()
	if _, ok := n.pods[key]; !ok {
		n.pods[key] = now
	}
	n.mu.Unlock()
}

func (n *notifications) pod(key string) (time.Time, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	t, ok := n.pods[key]
	return t, ok
}

// podWatch mirrors pods/ in etcd: when each pod's key (by
// "<namespace>/<name>") first appeared, and its labels with the time
// they were seen.
type podWatch struct {
	cache *kvstore.Cache[pod.Pod]
	done  chan error

	mu     sync.Mutex
	first  map[string]time.Time
	labels map[string]seenLabels
	count  int // keys present now
}

type seenLabels struct {
	labels map[string]string
	at     time.Time
}

func watchPods(ctx context.Context, c *kvstore.Client, keys kvstore.Keys) (*podWatch, error) {
	w := &podWatch{done: make(chan error, 1), first: map[string]time.Time{}, labels: map[string]seenLabels{}}
	cache, err := kvstore.NewCache(c, kvstore.CacheConfig[pod.Pod]{Prefix: keys.PodsPrefix(), Decode: pod.Decode})
	if err != nil {
		return nil, fmt.Errorf("cpbench: watch pods: %w", err)
	}
	w.cache = cache
	cache.Subscribe(w)
	go func() { w.done <- cache.Run(ctx) }()
	if err := cache.WaitSynced(ctx); err != nil {
		return nil, fmt.Errorf("cpbench: watch pods: %w", err)
	}
	return w, nil
}

func (w *podWatch) wait() error {
	if err := <-w.done; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// Upsert implements kvstore.Handler.
func (w *podWatch) Upsert(_ string, p pod.Pod) {
	now := time.Now()
	owner := p.Owner()
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.first[owner]; !ok {
		w.first[owner] = now
	}
	if _, ok := w.labels[owner]; !ok {
		w.count++
	}
	w.labels[owner] = seenLabels{labels: p.Labels, at: now}
}

// Delete implements kvstore.Handler. The key is "<node>/<namespace>/<name>".
func (w *podWatch) Delete(key string) {
	_, owner, _ := strings.Cut(key, "/")
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.labels[owner]; ok {
		w.count--
		delete(w.labels, owner)
	}
}

func (w *podWatch) present() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count
}

func (w *podWatch) firstSeen(owner string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.first[owner]
	return t, ok
}

// label returns the value of label k of the pod's key in etcd, and when
// that value was seen.
func (w *podWatch) label(owner, k string) (string, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.labels[owner]
	return s.labels[k], s.at
}

// waitPresent waits until n pod keys are in etcd.
func (w *podWatch) waitPresent(ctx context.Context, n int) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for w.present() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d pods in etcd: %w", w.present(), n, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func (r *run) podName(i int) (namespace, name string) {
	return r.ns[i%len(r.ns)], fmt.Sprintf("pod-%d", i)
}

// createAll creates the namespaces and services, then the pods, and
// measures the lags.
func (r *run) createAll(ctx context.Context) error {
	cfg := r.cfg
	pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cfg.Progress(fmt.Sprintf("creating %d namespaces and %d services", len(r.ns), cfg.Services))
	err := parallel(pctx, len(r.ns), cfg.Clients, func(ctx context.Context, i int) error {
		_, err := r.api.create(ctx, "/api/v1/namespaces", namespaceObject(r.ns[i]))
		return err
	})
	if err != nil {
		return err
	}
	err = parallel(pctx, cfg.Services, cfg.Clients, func(ctx context.Context, i int) error {
		ns := r.ns[i%len(r.ns)]
		_, err := r.api.create(ctx, "/api/v1/namespaces/"+ns+"/services", serviceObject(ns, fmt.Sprintf("svc-%d", i), appLabel(i, cfg.Services)))
		return err
	})
	if err != nil {
		return err
	}
	// The control plane leads and writes once the namespaces are in etcd.
	if err := waitPrefix(pctx, r.client, r.keys.NamespacesPrefix(), len(r.ns)); err != nil {
		return fmt.Errorf("cpbench: the control plane did not write the namespaces: %w", err)
	}

	cfg.Progress(fmt.Sprintf("creating %d pods with %d clients", cfg.Pods, cfg.Clients))
	created := make([]time.Time, cfg.Pods)
	took := make([]time.Duration, cfg.Pods)
	start := time.Now()
	events0 := r.notes.count.Load()
	err = parallel(pctx, cfg.Pods, cfg.Clients, func(ctx context.Context, i int) error {
		ns, name := r.podName(i)
		t0 := time.Now()
		_, err := r.api.create(ctx, "/api/v1/namespaces/"+ns+"/pods", podObject(ns, name, r.nodes[i%len(r.nodes)], appLabel(i, cfg.Services)))
		created[i] = time.Now()
		took[i] = created[i].Sub(t0)
		return err
	})
	if err != nil {
		return err
	}
	createEnd := time.Now()
	r.rep.CreateS = round(createEnd.Sub(start).Seconds(), 3)
	r.rep.CreatesPerS = round(float64(cfg.Pods)/createEnd.Sub(start).Seconds(), 1)
	slices.Sort(took)
	r.rep.CreateP99MS = round(ms(percentile(took, 99)), 1)
	cfg.Progress("waiting for every pod in etcd")
	if err := r.pods.waitPresent(pctx, cfg.Pods); err != nil {
		return fmt.Errorf("cpbench: %w", err)
	}
	end := time.Now()
	r.rep.AllInEtcdS = round(end.Sub(start).Seconds(), 3)
	r.rep.Events = r.notes.count.Load() - events0
	r.rep.EventsPerS = round(float64(r.rep.Events)/end.Sub(start).Seconds(), 1)

	var lag, informer, write []time.Duration
	for i := range cfg.Pods {
		ns, name := r.podName(i)
		key := ns + "/" + name
		seen, ok := r.pods.firstSeen(key)
		if !ok {
			return fmt.Errorf("cpbench: pod %s: no time it appeared in etcd", key)
		}
		lag = append(lag, seen.Sub(created[i]))
		if n, ok := r.notes.pod(key); ok {
			informer = append(informer, n.Sub(created[i]))
			write = append(write, seen.Sub(n))
		}
	}
	for _, d := range [][]time.Duration{lag, informer, write} {
		slices.Sort(d)
	}
	r.rep.LagP50MS, r.rep.LagP99MS = round(ms(percentile(lag, 50)), 1), round(ms(percentile(lag, 99)), 1)
	r.rep.LagMaxMS = round(ms(lag[len(lag)-1]), 1)
	r.rep.InformerP50MS, r.rep.InformerP99MS = round(ms(percentile(informer, 50)), 1), round(ms(percentile(informer, 99)), 1)
	r.rep.WriteP50MS, r.rep.WriteP99MS = round(ms(percentile(write, 50)), 1), round(ms(percentile(write, 99)), 1)
	return nil
}

// relabel patches the labels of the agent's pods one at a time and times
// each to etcd and, with an agent, to its endpoints map.
func (r *run) relabel(ctx context.Context, agent *benchAgent) error {
	cfg := r.cfg
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	// The agent's node is node 0: pods 0, Nodes, 2×Nodes, ...
	var eps []agentEndpoint
	if agent != nil {
		cfg.Progress(fmt.Sprintf("adding %d endpoints to the agent", cfg.Relabels))
		var err error
		if eps, err = agent.addEndpoints(rctx, r, cfg.Relabels); err != nil {
			return err
		}
		r.rep.RelabelTo = RelabelToDatapath
	} else {
		r.rep.RelabelTo = RelabelToEtcd
	}
	cfg.Progress(fmt.Sprintf("relabelling %d pods", cfg.Relabels))
	var toMap, toEtcd []time.Duration
	for j := range cfg.Relabels {
		ns, name := r.podName(j * cfg.Nodes)
		owner := ns + "/" + name
		rev := fmt.Sprintf("r%d", j)
		t0 := time.Now()
		if err := r.api.patchLabels(rctx, ns, name, map[string]string{"rev": rev}); err != nil {
			return err
		}
		var mapAt, etcdAt time.Time
		tick := time.NewTicker(500 * time.Microsecond)
		for mapAt.IsZero() || etcdAt.IsZero() {
			if etcdAt.IsZero() {
				if v, at := r.pods.label(owner, "rev"); v == rev {
					etcdAt = at
				}
			}
			if agent == nil {
				mapAt = t0
			} else if mapAt.IsZero() {
				id, err := agent.identity(eps[j].ip)
				if err != nil {
					tick.Stop()
					return err
				}
				if id != eps[j].identity {
					mapAt = time.Now()
				}
			}
			select {
			case <-rctx.Done():
				tick.Stop()
				return fmt.Errorf("cpbench: relabel of pod %s not seen (etcd: %v, endpoints map: %v): %w", owner, !etcdAt.IsZero(), !mapAt.IsZero(), rctx.Err())
			case <-tick.C:
			}
		}
		tick.Stop()
		toEtcd = append(toEtcd, etcdAt.Sub(t0))
		if agent != nil {
			toMap = append(toMap, mapAt.Sub(t0))
		}
	}
	r.rep.Relabels = cfg.Relabels
	slices.Sort(toEtcd)
	r.rep.RelabelEtcdP50MS, r.rep.RelabelEtcdP99MS = round(ms(percentile(toEtcd, 50)), 1), round(ms(percentile(toEtcd, 99)), 1)
	if agent != nil {
		slices.Sort(toMap)
		r.rep.RelabelP50MS, r.rep.RelabelP99MS = round(ms(percentile(toMap, 50)), 1), round(ms(percentile(toMap, 99)), 1)
	} else {
		r.rep.RelabelP50MS, r.rep.RelabelP99MS = r.rep.RelabelEtcdP50MS, r.rep.RelabelEtcdP99MS
	}
	return nil
}

// coldStart empties pods/ and times a fresh control plane until every pod
// is back.
func (r *run) coldStart(ctx context.Context) error {
	cfg := r.cfg
	sctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cfg.Progress("cold start: a fresh control plane against an empty pods/ prefix")
	if _, err := r.client.DeletePrefix(sctx, r.keys.PodsPrefix()); err != nil {
		return fmt.Errorf("cpbench: empty pods/: %w", err)
	}
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for r.pods.present() > 0 {
		select {
		case <-sctx.Done():
			return fmt.Errorf("cpbench: pods/ not empty after delete: %w", sctx.Err())
		case <-t.C:
		}
	}
	start := time.Now()
	stop, err := r.startControlPlane(sctx, newNotifications())
	if err != nil {
		return err
	}
	werr := r.pods.waitPresent(sctx, cfg.Pods)
	took := time.Since(start)
	if err := errors.Join(werr, stop()); err != nil {
		return fmt.Errorf("cpbench: cold start: %w", err)
	}
	r.rep.InitialSyncS = round(took.Seconds(), 3)
	return nil
}

// waitPrefix waits until prefix holds at least n keys.
func waitPrefix(ctx context.Context, c *kvstore.Client, prefix string, n int) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		kvs, _, err := c.List(ctx, prefix)
		if err == nil && len(kvs) >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%d of %d keys under %s: %w", len(kvs), n, prefix, ctx.Err()), err)
		case <-t.C:
		}
	}
}

// parallel runs f(0..n-1) on at most workers goroutines; the first error
// stops it.
func parallel(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

func appLabel(i, services int) string {
	if services == 0 {
		return "app"
	}
	return fmt.Sprintf("app-%d", i%services)
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 × n)
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func round(v float64, decimals int) float64 {
	p := math.Pow(10, float64(decimals))
	return math.Round(v*p) / p
}

func randomSuffix(n int) string {
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = chars[rand.IntN(len(chars))]
	}
	return string(b)
}
