package crd

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
)

// ReportingController names meshplane's control plane in the Events it
// writes (events.k8s.io/v1 reportingController).
const ReportingController = "meshplane.io/mesh-controlplane"

// Config configures a Writer.
type Config struct {
	// REST connects to the API server. Required. The Writer needs RBAC
	// permission to list, create, update and delete meshidentities and
	// meshnodes (and their status), to get meshnetworkpolicies and update
	// their status, and to create and patch events.events.k8s.io.
	// Its QPS and Burst bound the Writer's request rate (client-go's
	// default, 5 QPS, makes a first sync of N new views take about 2N/5
	// seconds: two requests each); later syncs write only the
	// difference.
	REST *rest.Config
}

// Validate reports whether c can make a Writer.
func (c Config) Validate() error {
	if c.REST == nil {
		return errors.New("crd writer: no API server configuration (Config.REST); pass the control plane's kubeconfig")
	}
	return nil
}

// Writer writes what the control plane publishes through the API server:
// the MeshIdentity and MeshNode views (SyncIdentities, SyncNodes) and the
// verdicts on policies (ReportMeshNetworkPolicy, ReportNetworkPolicy).
// Its methods are safe for concurrent use, but the Sync methods expect one
// caller at a time each (the leader's view loop): two concurrent syncs of
// the same kind race on the same objects and one gets conflicts.
//
// Events go through client-go's events broadcaster (events.k8s.io/v1),
// which sends them asynchronously and merges repeats into a series; its
// goroutines live from New to Close.
type Writer struct {
	client      *Client
	broadcaster events.EventBroadcaster
	recorder    events.EventRecorder
	cancel      context.CancelFunc
	closeOnce   sync.Once

	mu       sync.Mutex           // mu guards reported
	reported map[types.UID]string // NetworkPolicy UID → verdict last reported with an Event
}

// New returns a Writer for the API server cfg.REST points at.
func New(cfg Config) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	client, err := NewClient(cfg.REST)
	if err != nil {
		return nil, err
	}
	ecfg := rest.CopyConfig(cfg.REST)
	if ecfg.WarningHandler == nil && ecfg.WarningHandlerWithContext == nil {
		ecfg.WarningHandler = rest.NoWarnings{}
	}
	cs, err := kubernetes.NewForConfig(ecfg)
	if err != nil {
		return nil, fmt.Errorf("crd writer: %w", err)
	}
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	ctx, cancel := context.WithCancel(context.Background())
	if err := b.StartRecordingToSinkWithContext(ctx); err != nil {
		cancel()
		b.Shutdown()
		return nil, fmt.Errorf("crd writer: start events: %w", err)
	}
	return &Writer{
		client:      client,
		broadcaster: b,
		recorder:    b.NewRecorder(Scheme, ReportingController),
		cancel:      cancel,
		reported:    make(map[types.UID]string),
	}, nil
}

// Client is the Writer's meshplane.io client.
func (w *Writer) Client() *Client { return w.client }

// Close stops the Events broadcaster; Events not yet sent are dropped.
// Idempotent.
func (w *Writer) Close() {
	w.closeOnce.Do(func() {
		w.cancel()
		w.broadcaster.Shutdown()
	})
}
