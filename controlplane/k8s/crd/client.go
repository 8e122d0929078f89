package crd

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
)

// Scheme knows Kubernetes' built-in kinds and meshplane.io/v1alpha1: the
// REST client decodes with it, and Events name their objects through it.
var Scheme = newScheme()

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err) // static registrations; cannot fail
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Client reads and writes meshplane.io/v1alpha1 objects: a REST client
// for the group with Scheme's codecs, so objects are typed structs both
// ways (no conversion through unstructured maps) and the status
// subresource is one more path segment. Safe for concurrent use.
type Client struct {
	rc rest.Interface
}

// NewClient returns a Client for the API server cfg points at. cfg is
// copied, not kept. Unless cfg sets a warning handler, the API server's
// warnings are dropped (client-go's default logs them through klog, and
// this package does not log).
func NewClient(cfg *rest.Config) (*Client, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &v1alpha1.GroupVersion
	c.APIPath = "/apis"
	c.ContentType = runtime.ContentTypeJSON
	c.NegotiatedSerializer = serializer.NewCodecFactory(Scheme).WithoutConversion()
	if c.WarningHandler == nil && c.WarningHandlerWithContext == nil {
		c.WarningHandler = rest.NoWarnings{}
	}
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("meshplane.io client: %w", err)
	}
	return &Client{rc: rc}, nil
}

// RESTClient is the underlying client, for list and watch (e.g. an
// informer's ListWatch) of meshplane.io resources.
func (c *Client) RESTClient() rest.Interface { return c.rc }

// GetMeshNetworkPolicy reads one MeshNetworkPolicy.
func (c *Client) GetMeshNetworkPolicy(ctx context.Context, namespace, name string) (*v1alpha1.MeshNetworkPolicy, error) {
	out := &v1alpha1.MeshNetworkPolicy{}
	err := c.rc.Get().Namespace(namespace).Resource(v1alpha1.ResourceMeshNetworkPolicies).Name(name).
		Do(ctx).Into(out)
	return out, err
}

// ListMeshNetworkPolicies lists the MeshNetworkPolicies of a namespace
// ("" for all namespaces).
func (c *Client) ListMeshNetworkPolicies(ctx context.Context, namespace string) (*v1alpha1.MeshNetworkPolicyList, error) {
	out := &v1alpha1.MeshNetworkPolicyList{}
	err := c.rc.Get().Namespace(namespace).Resource(v1alpha1.ResourceMeshNetworkPolicies).
		Do(ctx).Into(out)
	return out, err
}

// ListMeshIdentities lists every MeshIdentity.
func (c *Client) ListMeshIdentities(ctx context.Context) (*v1alpha1.MeshIdentityList, error) {
	out := &v1alpha1.MeshIdentityList{}
	err := c.rc.Get().Resource(v1alpha1.ResourceMeshIdentities).Do(ctx).Into(out)
	return out, err
}

// ListMeshNodes lists every MeshNode.
func (c *Client) ListMeshNodes(ctx context.Context) (*v1alpha1.MeshNodeList, error) {
	out := &v1alpha1.MeshNodeList{}
	err := c.rc.Get().Resource(v1alpha1.ResourceMeshNodes).Do(ctx).Into(out)
	return out, err
}

// create POSTs obj and decodes the answer into out.
func (c *Client) create(ctx context.Context, resource, namespace string, obj, out runtime.Object) error {
	return in(c.rc.Post(), namespace).Resource(resource).
		VersionedParams(&metav1.CreateOptions{FieldManager: FieldManager}, metav1.ParameterCodec).
		Body(obj).Do(ctx).Into(out)
}

// update PUTs obj (to its status subresource when status), with obj's
// resourceVersion as the precondition, and decodes the answer into out.
func (c *Client) update(ctx context.Context, resource, namespace, name string, status bool, obj, out runtime.Object) error {
	r := in(c.rc.Put(), namespace).Resource(resource).Name(name)
	if status {
		r = r.SubResource("status")
	}
	return r.VersionedParams(&metav1.UpdateOptions{FieldManager: FieldManager}, metav1.ParameterCodec).
		Body(obj).Do(ctx).Into(out)
}

// delete deletes name if its UID is still uid (not a new object of the
// same name created meanwhile).
func (c *Client) delete(ctx context.Context, resource, namespace, name string, uid types.UID) error {
	return in(c.rc.Delete(), namespace).Resource(resource).Name(name).
		Body(&metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}).
		Do(ctx).Error()
}

// in scopes r to namespace, or leaves it cluster-scoped for "" (the REST
// client refuses an explicitly empty namespace on writes).
func in(r *rest.Request, namespace string) *rest.Request {
	if namespace == "" {
		return r
	}
	return r.Namespace(namespace)
}

// rbacHint adds what to do to a permission error, whose message (from the
// API server) already names the user, the verb and the resource.
func rbacHint(err error) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%w; grant it to the control plane's service account (the permissions are listed in docs/operations.md, \"Custom resources\")", err)
	}
	return err
}
