package k8s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
	"github.com/meshplane/meshplane/controlplane/k8s/crd"
	"github.com/meshplane/meshplane/node"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/service"
)

// ErrConfig is wrapped by errors in the configuration: a missing or
// unreadable kubeconfig, one without a cluster, no in-cluster service
// account.
var ErrConfig = errors.New("invalid kubernetes configuration")

// ErrUnreachable is wrapped when the apiserver cannot be reached or
// rejects the credentials.
var ErrUnreachable = errors.New("kubernetes apiserver unavailable")

// ErrForbidden is wrapped by every *PermissionError.
var ErrForbidden = errors.New("missing kubernetes permission")

// PermissionError is a permission the control plane needs and RBAC does not
// give it.
type PermissionError struct {
	Verb     string // list, watch, create
	Group    string // API group, "" for the core group
	Resource string // pods, endpointslices, ...
	// Err is the apiserver's Forbidden (which names the user), or nil
	// when an access review found the permission missing.
	Err error
}

func (e *PermissionError) Error() string {
	msg := fmt.Sprintf("%s: may not %s %s (API group %q) cluster-wide; grant it in a ClusterRole bound to the control plane's user (it needs get, list and watch on what it reads, and create on events)",
		ErrForbidden, e.Verb, e.Resource, e.Group)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is makes errors.Is(err, ErrForbidden) hold.
func (e *PermissionError) Is(target error) bool { return target == ErrForbidden }

// Unwrap returns the apiserver's error.
func (e *PermissionError) Unwrap() error { return e.Err }

// Config says how to reach the Kubernetes apiserver.
type Config struct {
	// Kubeconfig is the path of a kubeconfig file. Empty: the in-cluster
	// configuration (the service account of the pod the control plane
	// runs in).
	Kubeconfig string
	// Context is the kubeconfig context to use; empty: its
	// current-context.
	Context string
	// SkipCRDInstall leaves meshplane's CRDs alone: false (the default)
	// means Run applies them (crd.Install, which needs permission to
	// create and patch customresourcedefinitions); true means an operator
	// installed them, and Run fails if they are missing.
	SkipCRDInstall bool
	// REST, if set, is the client configuration to use instead of
	// Kubeconfig and Context.
	REST *rest.Config
	// OnWatchError, if set, is called from an informer's goroutine when
	// its list or watch fails after Run has started (the informer lists
	// again with backoff): a Forbidden (RBAC changed under the running
	// control plane) arrives as a *PermissionError. client-go keeps
	// re-watching through an apiserver that refuses connections without
	// calling it. It must not block. Nil leaves client-go's default (a
	// klog line on stderr).
	OnWatchError func(resource string, err error)
}

// RESTConfig loads cfg into a client-go configuration; its errors wrap
// ErrConfig and say what to fix.
func RESTConfig(cfg Config) (*rest.Config, error) {
	if cfg.Kubeconfig == "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("%w: no kubeconfig given and not running in a Kubernetes pod (%w): pass --kubeconfig FILE", ErrConfig, err)
		}
		return rc, nil
	}
	if _, err := os.Stat(cfg.Kubeconfig); err != nil {
		return nil, fmt.Errorf("%w: kubeconfig: %w; pass the path of a kubeconfig file", ErrConfig, err)
	}
	raw, err := clientcmd.LoadFromFile(cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("%w: kubeconfig %s: %w; it must be a kubeconfig in YAML (see kubectl config view)", ErrConfig, cfg.Kubeconfig, err)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*raw, &clientcmd.ConfigOverrides{CurrentContext: cfg.Context}).ClientConfig()
	switch {
	case clientcmd.IsEmptyConfig(err):
		return nil, fmt.Errorf("%w: kubeconfig %s has no cluster, user or context; write one with kubectl config set-cluster, set-credentials and set-context", ErrConfig, cfg.Kubeconfig)
	case err != nil:
		return nil, fmt.Errorf("%w: kubeconfig %s: %w", ErrConfig, cfg.Kubeconfig, err)
	}
	return rc, nil
}

// The resources the source watches, with their API groups.
var watched = []struct{ group, resource string }{
	{"", "namespaces"}, {"", "pods"}, {"", "services"}, {"discovery.k8s.io", "endpointslices"},
	{"networking.k8s.io", "networkpolicies"}, {"", "nodes"}, {v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshNetworkPolicies},
}

// The writes the control plane makes to the API server besides Events
// on core objects: the MeshNetworkPolicy verdicts and the views.
var writes = []struct{ verb, group, resource, subresource string }{
	{"update", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshNetworkPolicies, "status"},
	{"create", "events.k8s.io", "events", ""},
	{"list", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshIdentities, ""},
	{"create", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshIdentities, ""},
	{"update", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshIdentities, ""},
	{"update", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshIdentities, "status"},
	{"delete", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshIdentities, ""},
	{"list", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshNodes, ""},
	{"create", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshNodes, ""},
	{"update", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshNodes, ""},
	{"update", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshNodes, "status"},
	{"delete", v1alpha1.GroupVersion.Group, v1alpha1.ResourceMeshNodes, ""},
}

// Source is the Kubernetes side of the control plane: one shared informer
// (one list and one watch, cluster-wide) per kind it reads — Namespaces,
// Pods, Services, EndpointSlices, NetworkPolicies and Nodes — and the
// conversions to meshplane's model. It implements controlplane.Source.
//
// Its informers' goroutines are started and owned by Run, and stopped
// before Run returns.
type Source struct {
	client  kubernetes.Interface
	rest    *rest.Config
	cfg     Config
	mesh    *crd.Client
	host    string
	factory informers.SharedInformerFactory

	namespaces, pods, services, slices, policies, nodes cache.SharedIndexInformer
	meshPolicies                                        cache.SharedIndexInformer

	reports  *reports  // the Events ReportInvalid queues
	verdicts *verdicts // the MeshNetworkPolicy verdicts the lister queues
	// writer writes the verdicts and the views; Run sets it before it
	// closes started.
	writer *crd.Writer

	runOnce sync.Once
	started chan struct{} // closed once Run has started the informers
}

// byService indexes EndpointSlices by "<namespace>/<service>".
const byService = "service"

// New connects (lazily: nothing is sent yet) to the apiserver that cfg
// names.
func New(cfg Config) (*Source, error) {
	rc := cfg.REST
	if rc == nil {
		var err error
		if rc, err = RESTConfig(cfg); err != nil {
			return nil, err
		}
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	mc, err := crd.NewClient(rc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	f := informers.NewSharedInformerFactory(c, 0)
	s := &Source{
		client: c, rest: rest.CopyConfig(rc), cfg: cfg, mesh: mc, host: rc.Host, factory: f, started: make(chan struct{}),
		reports: newReports(), verdicts: newVerdicts(),
		meshPolicies: cache.NewSharedIndexInformer(
			cache.NewListWatchFromClient(mc.RESTClient(), v1alpha1.ResourceMeshNetworkPolicies, metav1.NamespaceAll, fields.Everything()),
			&v1alpha1.MeshNetworkPolicy{}, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}),
		namespaces: f.Core().V1().Namespaces().Informer(),
		pods:       f.Core().V1().Pods().Informer(),
		services:   f.Core().V1().Services().Informer(),
		slices:     f.Discovery().V1().EndpointSlices().Informer(),
		policies:   f.Networking().V1().NetworkPolicies().Informer(),
		nodes:      f.Core().V1().Nodes().Informer(),
	}
	if err := s.slices.AddIndexers(cache.Indexers{byService: func(obj any) ([]string, error) {
		if k := sliceService(obj); k != "" {
			return []string{k}, nil
		}
		return nil, nil
	}}); err != nil {
		return nil, fmt.Errorf("index endpointslices: %w", err)
	}
	if cfg.OnWatchError != nil {
		for _, w := range watched {
			if err := s.informerFor(w.resource).SetWatchErrorHandlerWithContext(watchErrorHandler(w.group, w.resource, cfg.OnWatchError)); err != nil {
				return nil, fmt.Errorf("watch error handler: %w", err)
			}
		}
	}
	return s, nil
}

func (s *Source) informerFor(resource string) cache.SharedIndexInformer {
	return map[string]cache.SharedIndexInformer{
		"namespaces": s.namespaces, "pods": s.pods, "services": s.services,
		"endpointslices": s.slices, "networkpolicies": s.policies, "nodes": s.nodes,
		v1alpha1.ResourceMeshNetworkPolicies: s.meshPolicies,
	}[resource]
}

// watchErrorHandler passes a reflector's failures to f, less the ones that
// are part of a watch's life: a watch closed by the server (EOF) and a
// resource version too old (the informer lists again).
func watchErrorHandler(group, resource string, f func(string, error)) cache.WatchErrorHandlerWithContext {
	return func(_ context.Context, _ *cache.Reflector, err error) {
		switch {
		case errors.Is(err, io.EOF), apierrors.IsResourceExpired(err), apierrors.IsGone(err):
			return
		case apierrors.IsForbidden(err):
			err = &PermissionError{Verb: "list or watch", Group: group, Resource: resource, Err: err}
		}
		f(resource, err)
	}
}

// sliceService is the key of the Service an EndpointSlice belongs to, or "".
func sliceService(obj any) string {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return ""
	}
	name := es.Labels[ServiceNameLabel]
	if name == "" {
		return ""
	}
	return es.Namespace + "/" + name
}

// Check asks the apiserver whether the control plane may list and watch
// every resource it reads, and create Events (ReportInvalid). Every missing permission is reported at once,
// each as a *PermissionError naming the verb and resource; an apiserver
// that cannot be reached or rejects the credentials wraps ErrUnreachable.
func (s *Source) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	lists := map[string]func() error{
		"namespaces": func() error { _, err := s.client.CoreV1().Namespaces().List(ctx, limit1); return err },
		"pods":       func() error { _, err := s.client.CoreV1().Pods("").List(ctx, limit1); return err },
		"services":   func() error { _, err := s.client.CoreV1().Services("").List(ctx, limit1); return err },
		"endpointslices": func() error {
			_, err := s.client.DiscoveryV1().EndpointSlices("").List(ctx, limit1)
			return err
		},
		"networkpolicies": func() error {
			_, err := s.client.NetworkingV1().NetworkPolicies("").List(ctx, limit1)
			return err
		},
		"nodes": func() error { _, err := s.client.CoreV1().Nodes().List(ctx, limit1); return err },
		v1alpha1.ResourceMeshNetworkPolicies: func() error {
			return s.mesh.RESTClient().Get().Resource(v1alpha1.ResourceMeshNetworkPolicies).
				VersionedParams(&limit1, metav1.ParameterCodec).Do(ctx).Error()
		},
	}
	var denied []error
	for _, w := range watched {
		err := lists[w.resource]()
		switch {
		case err == nil:
		case apierrors.IsForbidden(err):
			denied = append(denied, &PermissionError{Verb: "list", Group: w.group, Resource: w.resource, Err: err})
			continue
		case apierrors.IsNotFound(err) && w.group == v1alpha1.GroupVersion.Group:
			return fmt.Errorf("%w: meshplane's CRDs are not installed on %s (%w): kubectl apply -f deploy/crds/, or let mesh-controlplane install them (--install-crds)", ErrConfig, s.host, err)
		case apierrors.IsUnauthorized(err):
			return fmt.Errorf("%w: %s rejected the credentials (%w); check the kubeconfig's user or the service account token", ErrUnreachable, s.host, err)
		default:
			return fmt.Errorf("%w: %s: list %s: %w; check the kubeconfig's server and that the apiserver runs", ErrUnreachable, s.host, w.resource, err)
		}
		r, err := s.client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: "watch", Group: w.group, Resource: w.resource,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("%w: %s: review the permission to watch %s: %w", ErrUnreachable, s.host, w.resource, err)
		}
		if !r.Status.Allowed {
			denied = append(denied, &PermissionError{Verb: "watch", Group: w.group, Resource: w.resource})
		}
	}
	// ReportInvalid's Events.
	r, err := s.client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: "create", Resource: "events",
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("%w: %s: review the permission to create events: %w", ErrUnreachable, s.host, err)
	}
	if !r.Status.Allowed {
		denied = append(denied, &PermissionError{Verb: "create", Resource: "events"})
	}
	for _, w := range writes {
		r, err := s.client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: w.verb, Group: w.group, Resource: w.resource, Subresource: w.subresource,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("%w: %s: review the permission to %s %s: %w", ErrUnreachable, s.host, w.verb, w.resource, err)
		}
		if !r.Status.Allowed {
			res := w.resource
			if w.subresource != "" {
				res += "/" + w.subresource
			}
			denied = append(denied, &PermissionError{Verb: w.verb, Group: w.group, Resource: res})
		}
	}
	return errors.Join(denied...)
}

var limit1 = metav1.ListOptions{Limit: 1}

// Run checks the permissions (Check), starts the informers and calls
// notify for every object that is added, changed or deleted — for an
// EndpointSlice, with the key of its Service — until ctx ends. It returns
// ctx's error once the informers have stopped, or Check's error at once.
// It may be called once.
func (s *Source) Run(ctx context.Context, notify controlplane.Notify) error {
	err := errors.New("k8s: Source.Run called twice")
	s.runOnce.Do(func() { err = s.run(ctx, notify) })
	return err
}

func (s *Source) run(ctx context.Context, notify controlplane.Notify) error {
	if !s.cfg.SkipCRDInstall {
		dc, err := dynamic.NewForConfig(s.rest)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		if err := crd.Install(ctx, dc, time.Minute); err != nil {
			return fmt.Errorf("k8s: %w (or install them yourself: kubectl apply -f deploy/crds/, and pass --install-crds=false)", err)
		}
	}
	if err := s.Check(ctx); err != nil {
		return err
	}
	w, err := crd.New(crd.Config{REST: s.rest})
	if err != nil {
		return fmt.Errorf("k8s: %w", err)
	}
	defer w.Close()
	s.writer = w
	handlers := []struct {
		inf  cache.SharedIndexInformer
		kind controlplane.Kind
		key  func(obj any) string
	}{
		{s.namespaces, controlplane.KindNamespace, objectKey},
		{s.pods, controlplane.KindPod, objectKey},
		{s.services, controlplane.KindService, objectKey},
		{s.slices, controlplane.KindService, sliceService},
		{s.policies, controlplane.KindPolicy, objectKey},
		{s.nodes, controlplane.KindNode, objectKey},
		{s.meshPolicies, controlplane.KindPolicy, objectKey},
	}
	for _, h := range handlers {
		send := func(obj any) {
			if k := h.key(obj); k != "" {
				notify(h.kind, k)
			}
		}
		if _, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: send,
			UpdateFunc: func(old, cur any) {
				// A label change moves an EndpointSlice to another
				// Service: both change.
				if before, after := h.key(old), h.key(cur); before != after {
					send(old)
				}
				send(cur)
			},
			DeleteFunc: func(obj any) {
				if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = t.Obj
				}
				send(obj)
			},
		}); err != nil {
			return fmt.Errorf("k8s: add event handler: %w", err)
		}
	}
	s.factory.Start(ctx.Done())
	var wg sync.WaitGroup
	wg.Go(func() { s.meshPolicies.RunWithContext(ctx) })
	close(s.started)
	wg.Go(func() { s.reportLoop(ctx) })
	wg.Go(func() { s.verdictLoop(ctx, w) })
	<-ctx.Done()
	s.factory.Shutdown()
	wg.Wait()
	return ctx.Err()
}

// objectKey is an object's "<namespace>/<name>" (or "<name>" when it has
// no namespace), the key the informers' stores use.
func objectKey(obj any) string {
	k, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return ""
	}
	return k
}

// WaitSynced blocks until Run has started the informers and each has its
// first complete list, or ctx ends.
func (s *Source) WaitSynced(ctx context.Context) error {
	select {
	case <-s.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	if !cache.WaitForCacheSync(ctx.Done(), s.namespaces.HasSynced, s.pods.HasSynced, s.services.HasSynced,
		s.slices.HasSynced, s.policies.HasSynced, s.nodes.HasSynced, s.meshPolicies.HasSynced) {
		return ctx.Err()
	}
	return nil
}

// Kinds returns the listers over the informers' caches.
func (s *Source) Kinds() controlplane.Kinds {
	return controlplane.Kinds{
		Pods: lister[pod.Pod]{s.pods.GetStore(), func(obj any) (pod.Pod, bool, error) {
			return PodFrom(obj.(*corev1.Pod))
		}, controlplane.KindPod, s.reports},
		Namespaces: lister[pod.Namespace]{s.namespaces.GetStore(), func(obj any) (pod.Namespace, bool, error) {
			v, err := NamespaceFrom(obj.(*corev1.Namespace))
			return v, true, err
		}, controlplane.KindNamespace, s.reports},
		Services: lister[service.Service]{s.services.GetStore(), func(obj any) (service.Service, bool, error) {
			svc := obj.(*corev1.Service)
			return ServiceFrom(svc, s.endpointSlices(svc.Namespace+"/"+svc.Name))
		}, controlplane.KindService, s.reports},
		Policies: policyLister{s},
		Nodes:    lister[node.Member]{s.nodes.GetStore(), member, controlplane.KindNode, s.reports},
	}
}

// Nodes lists the Kubernetes Nodes, keyed by name (notifications carry
// controlplane.KindNode).
func (s *Source) Nodes() controlplane.Lister[Node] {
	return lister[Node]{s.nodes.GetStore(), func(obj any) (Node, bool, error) {
		return NodeFrom(obj.(*corev1.Node)), true, nil
	}, controlplane.KindNode, s.reports}
}

func (s *Source) endpointSlices(svcKey string) []*discoveryv1.EndpointSlice {
	objs, err := s.slices.GetIndexer().ByIndex(byService, svcKey)
	if err != nil {
		return nil // only for an unknown index name
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*discoveryv1.EndpointSlice))
	}
	return out
}

// lister is a controlplane.Lister over an informer's store. The store's
// objects are shared and never modified: the conversions copy what they
// keep.
type lister[T any] struct {
	store   cache.Store
	convert func(obj any) (T, bool, error)
	kind    controlplane.Kind
	reports *reports
}

func (l lister[T]) Keys() []string { return l.store.ListKeys() }

func (l lister[T]) Get(key string) (T, bool, error) {
	var zero T
	obj, ok, err := l.store.GetByKey(key)
	if err != nil || !ok {
		return zero, false, err
	}
	v, ok, err := l.convert(obj)
	if err == nil {
		l.reports.valid(l.kind, key)
	}
	return v, ok, err
}
