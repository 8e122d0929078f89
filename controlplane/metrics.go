package controlplane

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

// metrics are the control plane's Prometheus metrics, in a registry of its
// own (so that two control planes in one process, as in tests, do not
// collide).
type metrics struct {
	reg     *prometheus.Registry
	events  *prometheus.CounterVec
	writes  *prometheus.CounterVec
	batches *prometheus.CounterVec
	failed  *prometheus.CounterVec
	invalid *prometheus.CounterVec
	resyncs *prometheus.CounterVec
	lag     *prometheus.HistogramVec
	depth   *prometheus.GaugeVec
	leader  prometheus.Gauge
	terms   prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshplane_controlplane_events_total",
			Help: "Notifications from the source (an object that may have changed), per kind.",
		}, []string{"kind"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshplane_controlplane_writes_total",
			Help: "Keys written (op=put) and deleted (op=delete) in etcd, per kind.",
		}, []string{"kind", "op"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshplane_controlplane_write_batches_total",
			Help: "etcd transactions the reconcilers committed, per kind.",
		}, []string{"kind"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshplane_controlplane_write_errors_total",
			Help: "Transactions that failed and were retried with backoff, per kind.",
		}, []string{"kind"}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshplane_controlplane_invalid_objects_total",
			Help: "Objects the source holds but that cannot be written (they fail validation), per kind.",
		}, []string{"kind"}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshplane_controlplane_resyncs_total",
			Help: "Full resyncs (every key of the source against every key in etcd), per kind.",
		}, []string{"kind"}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshplane_controlplane_lag_seconds",
			Help:    "Time from a notification to its key's write in etcd, per kind.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"kind"}),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshplane_controlplane_queue_depth",
			Help: "Keys waiting for their reconciler, per kind.",
		}, []string{"kind"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshplane_controlplane_leader",
			Help: "1 while this replica is the leader (the one that writes), else 0.",
		}),
		terms: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshplane_controlplane_leader_terms_total",
			Help: "Times this replica became the leader.",
		}),
	}
	m.reg.MustRegister(m.events, m.writes, m.batches, m.failed, m.invalid, m.resyncs, m.lag, m.depth, m.leader, m.terms,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, k := range allKinds {
		// Create the series up front so dashboards see zeros, not gaps.
		m.events.WithLabelValues(k.String())
		m.writes.WithLabelValues(k.String(), "put")
		m.writes.WithLabelValues(k.String(), "delete")
		m.batches.WithLabelValues(k.String())
		m.depth.WithLabelValues(k.String())
	}
	return m
}

// serve serves /metrics on addr until ctx ends; the goroutines join g.
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
