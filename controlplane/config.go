package controlplane

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/kvstore"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("controlplane: invalid configuration")

// Clock tells the time; tests pass one they control.
type Clock interface{ Now() time.Time }

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// Config configures a control plane. The zero value of every optional
// field is documented with the field.
type Config struct {
	// Client is the cluster's etcd. Required; the caller closes it after
	// Run returns.
	Client *kvstore.Client
	// Cluster is the cluster name (the key prefix). Required.
	Cluster string
	// ClusterID is the cluster's ID in the mesh, 1-255. Required. Run (and
	// SyncOnce) compares Cluster and ClusterID with etcd's cluster record
	// before anything else, creating it when there is none, and refuses
	// to run when they differ.
	ClusterID int
	// Source is the desired state. Required.
	Source Source
	// Name is this replica's name in the leader election (and in logs).
	// Empty means the host name.
	Name string
	// LeaseTTL is the leader's lease: a leader that dies is replaced
	// within about this long. Zero means 5 seconds; at least 2 seconds
	// (etcd's unit is the second).
	LeaseTTL time.Duration
	// ResyncInterval is the time between full resyncs of each kind. Zero
	// means 5 minutes.
	ResyncInterval time.Duration
	// GCInterval is the time between passes of the garbage collectors
	// (identities, dead nodes' CIDRs, endpoints of nodes that are gone).
	// Zero means 1 minute; negative disables the collectors.
	GCInterval time.Duration
	// GracePeriod is how long an identity, a dead node's CIDRs or an
	// orphaned endpoint must stay unused before it is collected. Zero
	// means 10 minutes.
	GracePeriod time.Duration
	// ViewInterval is the time between full rewrites of the views a
	// Source that is a ViewWriter publishes (they are also rewritten on
	// every change in etcd). Zero means 1 minute.
	ViewInterval time.Duration
	// MetricsAddr is the host:port of the Prometheus endpoint. Empty
	// disables it.
	MetricsAddr string
	// OnInvalid, if set, is called (from a reconciler's goroutine; it must
	// not block) for an object the source holds that cannot be written,
	// such as a policy meshplane cannot enforce. Nil means a Warn log and
	// the Source's ReportInvalid, if it is an InvalidReporter.
	OnInvalid func(kind Kind, key string, err error)
	// Logger receives lifecycle and trouble reports. Nil discards them.
	Logger *slog.Logger
	// Clock is the time source. Nil means the wall clock.
	Clock Clock
}

// Default values of Config's optional fields.
const (
	DefaultLeaseTTL       = 5 * time.Second
	DefaultResyncInterval = 5 * time.Minute
	DefaultGCInterval     = time.Minute
	DefaultGracePeriod    = 10 * time.Minute
	DefaultViewInterval   = time.Minute
)

// Validate checks the required fields.
func (c Config) Validate() error {
	if c.Client == nil {
		return fmt.Errorf("%w: no etcd client", ErrConfig)
	}
	if c.Source == nil {
		return fmt.Errorf("%w: no source of desired state: pass a kubeconfig (or a lab topology)", ErrConfig)
	}
	if err := kvstore.ValidateClusterName(c.Cluster); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := identity.ValidateClusterID(c.ClusterID); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if c.LeaseTTL < 0 || c.LeaseTTL > 0 && c.LeaseTTL < 2*time.Second {
		return fmt.Errorf("%w: lease TTL %s: use at least 2s (or 0 for %s)", ErrConfig, c.LeaseTTL, DefaultLeaseTTL)
	}
	if c.ResyncInterval < 0 {
		return fmt.Errorf("%w: resync interval %s: use a positive duration (or 0 for %s)", ErrConfig, c.ResyncInterval, DefaultResyncInterval)
	}
	if c.GracePeriod < 0 {
		return fmt.Errorf("%w: grace period %s: use a positive duration (or 0 for %s)", ErrConfig, c.GracePeriod, DefaultGracePeriod)
	}
	return nil
}

// withDefaults fills in the zero values.
func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name, _ = os.Hostname()
		if c.Name == "" {
			c.Name = "mesh-controlplane"
		}
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = DefaultResyncInterval
	}
	if c.GCInterval == 0 {
		c.GCInterval = DefaultGCInterval
	}
	if c.GracePeriod == 0 {
		c.GracePeriod = DefaultGracePeriod
	}
	if c.ViewInterval <= 0 {
		c.ViewInterval = DefaultViewInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = wallClock{}
	}
	if c.OnInvalid == nil {
		log := c.Logger
		rep, _ := c.Source.(InvalidReporter)
		c.OnInvalid = func(kind Kind, key string, err error) {
			log.Warn("object cannot be written to etcd; etcd keeps its last value", "kind", kind.String(), "key", key, "error", err)
			if rep != nil {
				rep.ReportInvalid(kind, key, err)
			}
		}
	}
	return c
}
