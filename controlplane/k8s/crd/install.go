package crd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/meshplane/meshplane/deploy/crds"
)

// FieldManager is the field manager (server-side apply) and the
// reporting controller of meshplane's writes to the API server.
const FieldManager = "mesh-controlplane"

var crdResource = schema.GroupVersionResource{
	Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions",
}

// ErrNotEstablished is returned by Install when a CRD was applied but the
// API server did not establish it in time (for example, its names clash
// with another CRD's: see the CRD's NamesAccepted condition).
var ErrNotEstablished = errors.New("CRD not established")

// Manifests returns meshplane's CRDs as the API server takes them, in file
// order.
func Manifests() ([]*unstructured.Unstructured, error) {
	names, err := fs.Glob(crds.FS, "*.yaml")
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	out := make([]*unstructured.Unstructured, 0, len(names))
	for _, n := range names {
		b, err := crds.FS.ReadFile(n)
		if err != nil {
			return nil, err
		}
		b = bytes.TrimPrefix(b, []byte("---\n"))
		var obj map[string]any
		if err := yaml.Unmarshal(b, &obj); err != nil {
			return nil, fmt.Errorf("CRD manifest %s: %w", n, err)
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() != "CustomResourceDefinition" || u.GetName() == "" {
			return nil, fmt.Errorf("CRD manifest %s: not a named CustomResourceDefinition", n)
		}
		out = append(out, u)
	}
	return out, nil
}

// Install makes the API server serve meshplane's CRDs as this binary
// defines them: it applies each (server-side apply, field manager
// FieldManager, forcing conflicts: the binary's definition wins, as
// kubectl apply --server-side --force-conflicts would) and waits until
// every one is Established, at most timeout (0: until ctx ends). Applying
// an unchanged CRD writes nothing, so Install is cheap to run on every
// start. It needs RBAC permission to get, patch and create
// customresourcedefinitions.
func Install(ctx context.Context, client dynamic.Interface, timeout time.Duration) error {
	manifests, err := Manifests()
	if err != nil {
		return err
	}
	res := client.Resource(crdResource)
	for _, m := range manifests {
		if _, err := res.Apply(ctx, m.GetName(), m, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
			return fmt.Errorf("install CRD %s: %w", m.GetName(), rbacHint(err))
		}
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	for _, m := range manifests {
		var last *unstructured.Unstructured
		err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			got, err := res.Get(ctx, m.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, fmt.Errorf("install CRD %s: %w", m.GetName(), rbacHint(err))
			}
			last = got
			return conditionTrue(got, "Established"), nil
		})
		if err != nil {
			if ctx.Err() == nil || !errors.Is(err, ctx.Err()) {
				return err
			}
			return fmt.Errorf("%w: %s: %s", ErrNotEstablished, m.GetName(), describeConditions(last))
		}
	}
	return nil
}

// conditionTrue reports whether a CRD's status has condition typ True.
func conditionTrue(crd *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == typ && m["status"] == "True" {
			return true
		}
	}
	return false
}

// describeConditions summarises a CRD's conditions for an error.
func describeConditions(crd *unstructured.Unstructured) string {
	if crd == nil {
		return "never read back"
	}
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	if len(conds) == 0 {
		return "no conditions yet"
	}
	var b bytes.Buffer
	for i, c := range conds {
		m, _ := c.(map[string]any)
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%v=%v", m["type"], m["status"])
		if msg, _ := m["message"].(string); msg != "" {
			fmt.Fprintf(&b, " (%s)", msg)
		}
	}
	return b.String()
}
