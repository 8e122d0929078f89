// Package cpcmd reads mesh-controlplane's configuration from flags, the
// environment and an optional config file, and runs the control plane.
//
// Every flag has an environment variable (MESHPLANE_ and the flag's name
// in capitals with '-' as '_': --cluster-name is MESHPLANE_CLUSTER_NAME)
// and a config file key (the flag's name: "cluster-name: prod"). A flag
// beats the environment, which beats the file.
package cpcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshplane/meshplane/cmd/internal/configfile"
	"github.com/meshplane/meshplane/cmd/internal/etcdflags"
	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
)

// Options is what Load reads: the control plane's Config (without its
// etcd client and source, which Main makes), how to reach etcd and the
// Kubernetes API server, and the log level.
type Options struct {
	ControlPlane controlplane.Config
	Etcd         kvstore.Config
	// Kubeconfig is the kubeconfig file; empty means the in-cluster
	// configuration. KubeContext is its context; empty, the current one.
	Kubeconfig  string
	KubeContext string
	// InstallCRDs makes the source apply meshplane's CRDs at start.
	InstallCRDs bool
	Level       slog.Level
	// Warnings are things an operator should fix, for Main to log.
	Warnings []etcdflags.Warning
}

// NewSource makes the control plane's source of desired state from the
// Kubernetes options (main passes controlplane/k8s's): the kubeconfig,
// its context, and whether to install meshplane's CRDs.
type NewSource func(kubeconfig, kubeContext string, installCRDs bool) (controlplane.Source, error)

type flags struct {
	configFile              string
	name, cluster           string
	clusterID               int
	etcd                    kvstore.Config
	etcdFlags               *etcdflags.Flags
	kubeconfig, kubeContext string
	installCRDs             bool
	viewInterval            time.Duration
	leaseTTL, resync        time.Duration
	gcInterval, gracePeriod time.Duration
	metricsAddr             string
	logLevel                string
}

func newFlagSet(f *flags, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("mesh-controlplane", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.configFile, "config", "", "YAML config file: flag names as keys (env MESHPLANE_CONFIG)")
	fs.StringVar(&f.name, "name", "", "this replica's name in the leader election (default: the host name)")
	fs.StringVar(&f.cluster, "cluster-name", "default", "the cluster's name: its key prefix in etcd")
	fs.IntVar(&f.clusterID, "cluster-id", 1, "the cluster's ID in the mesh, 1-255: the same as the agents'; checked against the cluster record in etcd at start")
	f.etcdFlags = etcdflags.Bind(fs, &f.etcd) // required: --etcd-endpoints
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file of the cluster's API server (default: the in-cluster configuration)")
	fs.StringVar(&f.kubeContext, "kube-context", "", "the kubeconfig context to use (default: its current context)")
	fs.BoolVar(&f.installCRDs, "install-crds", true, "apply meshplane's CRDs (deploy/crds) at start; needs create and patch on customresourcedefinitions")
	fs.DurationVar(&f.viewInterval, "view-interval", controlplane.DefaultViewInterval, "how often the leader rewrites the MeshIdentity and MeshNode views in full (they follow etcd's changes too)")
	fs.DurationVar(&f.leaseTTL, "lease-ttl", controlplane.DefaultLeaseTTL, "the leader's lease: a dead leader is replaced within about this long")
	fs.DurationVar(&f.resync, "resync-interval", controlplane.DefaultResyncInterval, "how often every kind is compared in full with etcd")
	fs.DurationVar(&f.gcInterval, "gc-interval", controlplane.DefaultGCInterval, "how often the leader runs the garbage collectors (identities, dead nodes' CIDRs, orphaned endpoints); negative disables them")
	fs.DurationVar(&f.gracePeriod, "gc-grace-period", controlplane.DefaultGracePeriod, "how long something must stay unused before a collector removes it")
	fs.StringVar(&f.metricsAddr, "metrics-address", "127.0.0.1:9963", "host:port of the Prometheus endpoint; empty disables it")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	return fs
}

// Load parses args, then fills flags not given from the environment, then
// from the config file.
func Load(args []string, stderr io.Writer) (Options, error) {
	var f flags
	fs := newFlagSet(&f, stderr)
	if err := fs.Parse(args); err != nil {
		return Options{}, err
	}
	if fs.NArg() > 0 {
		return Options{}, fmt.Errorf("unexpected argument %q: mesh-controlplane takes only flags", fs.Arg(0))
	}
	if err := f.etcdFlags.SetFromEnv(); err != nil {
		return Options{}, err
	}
	if f.configFile != "" {
		if err := configfile.Apply(fs, f.configFile, "mesh-controlplane"); err != nil {
			return Options{}, err
		}
	}
	o, err := f.options()
	o.Warnings = f.etcdFlags.Warnings()
	return o, err
}

func (f *flags) options() (Options, error) {
	var o Options
	if err := o.Level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return o, fmt.Errorf("--log-level %q: use debug, info, warn or error", f.logLevel)
	}
	if len(f.etcd.Endpoints) == 0 {
		return o, fmt.Errorf("%w: no --etcd-endpoints: pass the cluster's etcd (mesh-controlplane never starts an embedded etcd: its replicas and the agents must share one)", controlplane.ErrConfig)
	}
	o.Etcd = f.etcd
	o.Kubeconfig, o.KubeContext, o.InstallCRDs = f.kubeconfig, f.kubeContext, f.installCRDs
	o.ControlPlane = controlplane.Config{
		Cluster: f.cluster, ClusterID: f.clusterID, Name: f.name, LeaseTTL: f.leaseTTL, ResyncInterval: f.resync,
		GCInterval: f.gcInterval, GracePeriod: f.gracePeriod, MetricsAddr: f.metricsAddr, ViewInterval: f.viewInterval,
	}
	if f.resync <= 0 {
		return o, fmt.Errorf("%w: --resync-interval %s: use a positive duration", controlplane.ErrConfig, f.resync)
	}
	if f.leaseTTL < 2*time.Second {
		return o, fmt.Errorf("%w: --lease-ttl %s: use at least 2s", controlplane.ErrConfig, f.leaseTTL)
	}
	if f.gracePeriod <= 0 {
		return o, fmt.Errorf("%w: --gc-grace-period %s: use a positive duration", controlplane.ErrConfig, f.gracePeriod)
	}
	if err := kvstore.ValidateClusterName(f.cluster); err != nil {
		return o, fmt.Errorf("--cluster-name: %w", err)
	}
	if err := identity.ValidateClusterID(f.clusterID); err != nil {
		return o, fmt.Errorf("%w: --cluster-id: %w", controlplane.ErrConfig, err)
	}
	return o, nil
}

// Main runs mesh-controlplane with args until ctx ends, logging to
// stderr, and returns the exit code: 2 for a configuration error, 1 when
// it cannot run.
func Main(ctx context.Context, args []string, stderr io.Writer, newSource NewSource) int {
	o, err := Load(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "mesh-controlplane:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.Level}))
	for _, w := range o.Warnings {
		log.Warn(w.Msg, w.Attrs...)
	}
	src, err := newSource(o.Kubeconfig, o.KubeContext, o.InstallCRDs)
	if err != nil {
		fmt.Fprintln(stderr, "mesh-controlplane:", err)
		return 2
	}
	client, err := kvstore.New(ctx, o.Etcd)
	if err != nil {
		fmt.Fprintln(stderr, "mesh-controlplane:", err)
		return 1
	}
	defer func() { _ = client.Close() }()
	cfg := o.ControlPlane
	cfg.Client, cfg.Source, cfg.Logger = client, src, log
	cp, err := controlplane.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "mesh-controlplane:", err)
		return 2
	}
	if err := cp.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "mesh-controlplane:", err)
		return 1
	}
	return 0
}
