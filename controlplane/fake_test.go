package controlplane

import (
	"context"
	"maps"
	"slices"
	"sync"

	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
	"github.com/meshplane/meshplane/service"
)

// fakeSource is a Source whose desired state the test sets.
type fakeSource struct {
	mu sync.Mutex
	// mu guards notify.
	notify     []Notify
	once       sync.Once
	started    chan struct{}
	pods       *fakeLister[pod.Pod]
	namespaces *fakeLister[pod.Namespace]
	services   *fakeLister[service.Service]
	policies   *fakeLister[*policy.Policy]
}

func newFakeSource() *fakeSource {
	s := &fakeSource{started: make(chan struct{})}
	s.pods = &fakeLister[pod.Pod]{src: s, kind: KindPod, m: map[string]entry[pod.Pod]{}}
	s.namespaces = &fakeLister[pod.Namespace]{src: s, kind: KindNamespace, m: map[string]entry[pod.Namespace]{}}
	s.services = &fakeLister[service.Service]{src: s, kind: KindService, m: map[string]entry[service.Service]{}}
	s.policies = &fakeLister[*policy.Policy]{src: s, kind: KindPolicy, m: map[string]entry[*policy.Policy]{}}
	return s
}

func (s *fakeSource) Run(ctx context.Context, notify Notify) error {
	s.mu.Lock()
	s.notify = append(s.notify, notify)
	s.mu.Unlock()
	s.once.Do(func() { close(s.started) })
	<-ctx.Done()
	return ctx.Err()
}

func (s *fakeSource) WaitSynced(ctx context.Context) error {
	select {
	case <-s.started:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *fakeSource) Kinds() Kinds {
	return Kinds{Pods: s.pods, Namespaces: s.namespaces, Services: s.services, Policies: s.policies}
}

type entry[T any] struct {
	v   T
	err error
}

// fakeLister is one kind of a fakeSource.
type fakeLister[T any] struct {
	src  *fakeSource
	kind Kind
	mu   sync.Mutex
	// mu guards m.
	m map[string]entry[T]
}

func (l *fakeLister[T]) Keys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Collect(maps.Keys(l.m))
}

func (l *fakeLister[T]) Get(key string) (T, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[key]
	return e.v, ok, e.err
}

// set sets key's value (or, with err, makes it invalid) and notifies.
func (l *fakeLister[T]) set(key string, v T, err error) {
	l.mu.Lock()
	l.m[key] = entry[T]{v, err}
	l.mu.Unlock()
	l.src.fire(l.kind, key)
}

func (l *fakeLister[T]) del(key string) {
	l.mu.Lock()
	delete(l.m, key)
	l.mu.Unlock()
	l.src.fire(l.kind, key)
}

// fire notifies every control plane running on the source.
func (s *fakeSource) fire(kind Kind, key string) {
	s.mu.Lock()
	ns := slices.Clone(s.notify)
	s.mu.Unlock()
	for _, n := range ns {
		n(kind, key)
	}
}
