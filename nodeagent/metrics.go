package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
)

// metrics are the agent's Prometheus metrics, in a registry of its own (so
// that several agents in one process, as in tests, do not collide).
type metrics struct {
	reg       *prometheus.Registry
	ops       *prometheus.CounterVec
	errs      *prometheus.CounterVec
	reconcile *prometheus.HistogramVec
	// relabels counts endpoints relabelled (relabel.go), relabelErrors
	// the relabels that failed (each retry counts).
	relabels, relabelErrors prometheus.Counter
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshplane_bpf_map_operations_total",
			Help: "Entries written (op=put) and deleted (op=delete) in the pinned eBPF maps.",
		}, []string{"map", "op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshplane_bpf_map_errors_total",
			Help: "Failed eBPF map writes (retried with backoff), a full map included.",
		}, []string{"map"}),
		reconcile: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshplane_bpf_reconcile_duration_seconds",
			Help:    "Time a reconcile round spent writing one map.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 4, 10),
		}, []string{"map"}),
	}
	m.relabels = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshplane_endpoint_relabels_total",
		Help: "Local endpoints whose labels, namespace labels or ports changed in etcd and that took them (and their label set's identity) while running.",
	})
	m.relabelErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshplane_endpoint_relabel_errors_total",
		Help: "Relabels of local endpoints that failed: etcd trouble (retried with backoff) or invalid metadata (waits for a fix).",
	})
	m.reg.MustRegister(m.ops, m.errs, m.reconcile, m.relabels, m.relabelErrors, statusCollector{a}, datapathCollector{a}, routingCollector{a},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

type observer struct {
	m    *metrics
	name string
}

func (o observer) Applied(puts, deletes int, took time.Duration) {
	o.m.ops.WithLabelValues(o.name, "put").Add(float64(puts))
	o.m.ops.WithLabelValues(o.name, "delete").Add(float64(deletes))
	o.m.reconcile.WithLabelValues(o.name).Observe(took.Seconds())
}

func (o observer) Failed(error) { o.m.errs.WithLabelValues(o.name).Inc() }

func (m *metrics) observer(name string) observer {
	// Create the series up front so dashboards see zeros, not gaps.
	m.ops.WithLabelValues(name, "put")
	m.ops.WithLabelValues(name, "delete")
	m.errs.WithLabelValues(name)
	return observer{m, name}
}

// serve serves /metrics on addr until ctx ends.
func (m *metrics) serve(ctx context.Context, g *errgroup.Group, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics address %s: %w; pass another --metrics-address, or an empty one to disable", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	return nil
}

// statusCollector turns the agent's status into gauges at scrape time.
type statusCollector struct{ a *Agent }

var (
	descMapEntries  = prometheus.NewDesc("meshplane_bpf_map_entries", "Entries of a pinned map: desired (the agent's tables) and installed (the kernel map).", []string{"map", "state"}, nil)
	descMapPending  = prometheus.NewDesc("meshplane_bpf_map_pending_entries", "Changes not yet written to a map (non-zero and growing: a map is full or failing).", []string{"map"}, nil)
	descMapMax      = prometheus.NewDesc("meshplane_bpf_map_max_entries", "A map's capacity.", []string{"map"}, nil)
	descWatchEvents = prometheus.NewDesc("meshplane_kvstore_watch_events_total", "etcd watch events applied, per cache.", []string{"cache"}, nil)
	descWatchRelist = prometheus.NewDesc("meshplane_kvstore_watch_relists_total", "Full lists of a prefix (the first, and after compactions).", []string{"cache"}, nil)
	descCacheSize   = prometheus.NewDesc("meshplane_kvstore_cache_entries", "Entries in a watch cache.", []string{"cache"}, nil)
	descInvalidNow  = prometheus.NewDesc("meshplane_kvstore_cache_invalid_values",
		"Keys of a watch cache's prefix whose etcd value the agent cannot decode now (the agent keeps the last good version or isolates what the key concerns; fix or delete the key).", []string{"cache"}, nil)
	descInvalidSeen = prometheus.NewDesc("meshplane_kvstore_cache_invalid_values_total",
		"Values of a watch cache's prefix the agent could not decode, ever.", []string{"cache"}, nil)
	descRepairs = prometheus.NewDesc("meshplane_kvstore_session_repairs_total",
		"The agent's own etcd keys (node record, endpoints) it wrote back after someone else changed or deleted them.", nil, nil)
	descPolicyRev = prometheus.NewDesc("meshplane_policy_enforced_revision",
		"The etcd revision up to which the node enforces the policies (0 until the agent is synced).", nil, nil)
	descSessionUp      = prometheus.NewDesc("meshplane_kvstore_session_up", "1 while the agent holds its etcd lease and etcd answers, else 0.", nil, nil)
	descSessionGen     = prometheus.NewDesc("meshplane_kvstore_session_generation", "Leases the agent's session has been granted (grows after each loss).", nil, nil)
	descMembers        = prometheus.NewDesc("meshplane_gossip_members", "Gossip members as this node sees them, by state (alive, suspect, unresponsive, restarting, dead, left).", []string{"state"}, nil)
	descHealthScore    = prometheus.NewDesc("meshplane_gossip_health_score", "This agent's Lifeguard awareness of its own health: 0 is healthy; each point stretches its probe interval (it is likely the slow one).", nil, nil)
	descUnconfirmed    = prometheus.NewDesc("meshplane_gossip_unconfirmed_deaths_total", "Deaths gossip declared that the direct check contradicted (the node answered TCP on its gossip port): removals that did not happen.", nil, nil)
	descPodIPs         = prometheus.NewDesc("meshplane_ipam_pod_ips", "Pod IPs of this node's CIDRs, by state.", []string{"state"}, nil)
	descPodIPConflicts = prometheus.NewDesc("meshplane_ipam_pod_ip_conflicts",
		"Pod IPs this node's records give to more than one pod (kept allocated; a person must delete the wrong pods).", nil, nil)
	descPodIPUnreferenced = prometheus.NewDesc("meshplane_ipam_unreferenced_pod_ips",
		"Pod IPs allocated to pods with no state file or etcd entry (kept allocated until CNI garbage collection).", nil, nil)
	descReady = prometheus.NewDesc("meshplane_agent_ready", "1 when the agent is ok (synced, etcd reachable, maps written), else 0.", nil, nil)
)

func (statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMapEntries, descMapPending, descMapMax, descWatchEvents, descWatchRelist,
		descCacheSize, descInvalidNow, descInvalidSeen, descRepairs, descPolicyRev, descSessionUp, descSessionGen, descMembers, descHealthScore, descUnconfirmed, descPodIPs, descPodIPConflicts, descPodIPUnreferenced, descReady} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.Status()
	g := prometheus.GaugeValue
	for _, m := range st.Maps {
		ch <- prometheus.MustNewConstMetric(descMapEntries, g, float64(m.Desired), m.Name, "desired")
		ch <- prometheus.MustNewConstMetric(descMapEntries, g, float64(m.Installed), m.Name, "installed")
		ch <- prometheus.MustNewConstMetric(descMapPending, g, float64(m.Pending), m.Name)
		ch <- prometheus.MustNewConstMetric(descMapMax, g, float64(m.MaxEntries), m.Name)
	}
	for _, cs := range st.Caches {
		ch <- prometheus.MustNewConstMetric(descWatchEvents, prometheus.CounterValue, float64(cs.Events), cs.Name)
		ch <- prometheus.MustNewConstMetric(descWatchRelist, prometheus.CounterValue, float64(cs.Relists), cs.Name)
		ch <- prometheus.MustNewConstMetric(descCacheSize, g, float64(cs.Entries), cs.Name)
		ch <- prometheus.MustNewConstMetric(descInvalidNow, g, float64(cs.InvalidNow), cs.Name)
		ch <- prometheus.MustNewConstMetric(descInvalidSeen, prometheus.CounterValue, float64(cs.Invalid), cs.Name)
	}
	ch <- prometheus.MustNewConstMetric(descRepairs, prometheus.CounterValue, float64(st.Etcd.Repairs))
	ch <- prometheus.MustNewConstMetric(descPolicyRev, g, float64(st.PolicyRevision))
	up := 0.0
	if st.Etcd.State == "connected" {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descSessionUp, g, up)
	ch <- prometheus.MustNewConstMetric(descSessionGen, prometheus.CounterValue, float64(st.Etcd.Generation))
	for state, n := range map[string]int{"alive": st.Gossip.Alive, "suspect": st.Gossip.Suspect, "dead": st.Gossip.Dead, "left": st.Gossip.Left,
		"unresponsive": st.Gossip.Unresponsive, "restarting": st.Gossip.Restarting} {
		ch <- prometheus.MustNewConstMetric(descMembers, g, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(descHealthScore, g, float64(st.Gossip.HealthScore))
	ch <- prometheus.MustNewConstMetric(descUnconfirmed, prometheus.CounterValue, float64(st.Gossip.UnconfirmedDeaths))
	ch <- prometheus.MustNewConstMetric(descPodIPs, g, float64(st.IPAM.Used), "used")
	ch <- prometheus.MustNewConstMetric(descPodIPs, g, float64(st.IPAM.Free), "free")
	ch <- prometheus.MustNewConstMetric(descPodIPConflicts, g, float64(len(st.IPAM.Conflicts)))
	ch <- prometheus.MustNewConstMetric(descPodIPUnreferenced, g, float64(st.IPAM.Unreferenced))
	ready := 0.0
	if st.State == StateOK {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descReady, g, ready)
}
