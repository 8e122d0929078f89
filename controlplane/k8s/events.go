package k8s

import (
	"context"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshplane/meshplane/controlplane"
)

// InvalidReason is the reason of the Warning Event that says meshplane
// cannot write an object (ReportInvalid).
const InvalidReason = "MeshplaneInvalid"

// maxEventMessage is the apiserver's limit on an Event's message.
const maxEventMessage = 1024

// reports are the invalid objects waiting for their Event: a bounded
// queue that ReportInvalid fills without blocking and Run's reporter
// goroutine drains.
type reports struct {
	ch chan report

	mu   sync.Mutex        // mu guards sent
	sent map[string]string // "<kind> <key>" → the message its last Event carried
}

type report struct {
	kind     controlplane.Kind
	key, msg string
}

func newReports() *reports {
	return &reports{ch: make(chan report, 256), sent: make(map[string]string)}
}

// ReportInvalid records a Warning Event (reason InvalidReason, the error as
// its message) on the object of kind and key: what `kubectl describe`
// shows its owner. It never blocks; an object is reported again only when
// its error changes (or after it was valid in between, or when the queue
// was full or the Event could not be written). It implements
// controlplane.InvalidReporter.
func (s *Source) ReportInvalid(kind controlplane.Kind, key string, err error) {
	if err == nil {
		return
	}
	r := report{kind: kind, key: key, msg: err.Error()}
	id := kind.String() + " " + key
	s.reports.mu.Lock()
	defer s.reports.mu.Unlock()
	if s.reports.sent[id] == r.msg {
		return
	}
	select {
	case s.reports.ch <- r:
		s.reports.sent[id] = r.msg
	default: // full: the next reconcile of the object reports it again
	}
}

// valid forgets that an object was reported, so that it is reported again
// if it turns invalid again.
func (r *reports) valid(kind controlplane.Kind, key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.sent, kind.String()+" "+key)
}

func (r *reports) failed(rep report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id := rep.kind.String() + " " + rep.key; r.sent[id] == rep.msg {
		delete(r.sent, id)
	}
}

// reportLoop writes the queued Events until ctx ends. It runs in Run's
// goroutine set.
func (s *Source) reportLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-s.reports.ch:
			if err := s.writeEvent(ctx, r); err != nil {
				s.reports.failed(r)
			}
		}
	}
}

// The objects Events are written on, by kind.
var eventKinds = map[controlplane.Kind]struct{ apiVersion, kind string }{
	controlplane.KindPod:       {"v1", "Pod"},
	controlplane.KindNamespace: {"v1", "Namespace"},
	controlplane.KindService:   {"v1", "Service"},
	controlplane.KindPolicy:    {"networking.k8s.io/v1", "NetworkPolicy"},
	controlplane.KindNode:      {"v1", "Node"},
}

func (s *Source) informer(kind controlplane.Kind) cache.SharedIndexInformer {
	switch kind {
	case controlplane.KindPod:
		return s.pods
	case controlplane.KindNamespace:
		return s.namespaces
	case controlplane.KindService:
		return s.services
	case controlplane.KindPolicy:
		return s.policies
	case controlplane.KindNode:
		return s.nodes
	}
	return nil
}

func (s *Source) writeEvent(ctx context.Context, r report) error {
	inf, ek := s.informer(r.kind), eventKinds[r.kind]
	if inf == nil {
		return nil
	}
	obj, ok, err := inf.GetStore().GetByKey(r.key)
	if err != nil || !ok {
		return err // gone: nothing to report on
	}
	meta, ok := obj.(metav1.Object)
	if !ok {
		return nil
	}
	ns := meta.GetNamespace()
	if ns == "" {
		ns = metav1.NamespaceDefault // cluster-scoped objects' Events live there
	}
	msg := r.msg
	if len(msg) > maxEventMessage {
		msg = msg[:maxEventMessage-3] + "..."
	}
	now := metav1.Now()
	_, err = s.client.CoreV1().Events(ns).Create(ctx, &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: strings.ToLower(ek.kind) + "." + meta.GetName() + ".", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: ek.apiVersion, Kind: ek.kind, Namespace: meta.GetNamespace(), Name: meta.GetName(),
			UID: meta.GetUID(), ResourceVersion: meta.GetResourceVersion(),
		},
		Reason: InvalidReason, Message: msg, Type: corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "mesh-controlplane"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "meshplane.io/mesh-controlplane", ReportingInstance: "mesh-controlplane",
	}, metav1.CreateOptions{})
	return err
}
