package crd_test

import (
	"errors"
	"strings"
	"testing"

	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/yaml"

	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
	"github.com/meshplane/meshplane/controlplane/k8s/crd"
	"github.com/meshplane/meshplane/policy"
)

// unenforceable is a MeshNetworkPolicy the API server's schema takes but
// meshplane's validation refuses: the except is not inside the cidr.
const unenforceable = `apiVersion: meshplane.io/v1alpha1
kind: MeshNetworkPolicy
metadata:
  name: outside
  namespace: NAMESPACE
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock:
        cidr: 192.168.0.0/16
        except: [10.0.0.0/8]
`

// TestReportMeshNetworkPolicy: an unenforceable policy gets Accepted=False
// with policy.Parse's message and a Warning Event; reporting again writes
// nothing; the fixed policy gets Accepted=True for its new generation.
func TestReportMeshNetworkPolicy(t *testing.T) {
	cfg := installed(t)
	ctx := testContext(t)
	ns := kube.Namespace(t)
	w := newWriter(t, cfg)
	c := w.Client()

	var obj v1alpha1.MeshNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(strings.ReplaceAll(unenforceable, "NAMESPACE", ns)), &obj); err != nil {
		t.Fatal(err)
	}
	if err := c.RESTClient().Post().Namespace(ns).Resource(v1alpha1.ResourceMeshNetworkPolicies).Body(&obj).Do(ctx).Error(); err != nil {
		t.Fatalf("the API server refused a policy its schema allows: %v", err)
	}
	cur, err := c.GetMeshNetworkPolicy(ctx, ns, "outside")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := cur.Document()
	if err != nil {
		t.Fatal(err)
	}
	_, verdict := policy.Parse(doc)
	if !errors.Is(verdict, policy.ErrInvalid) {
		t.Fatalf("policy.Parse: %v, want ErrInvalid", verdict)
	}
	if err := w.ReportMeshNetworkPolicy(ctx, cur, verdict); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetMeshNetworkPolicy(ctx, ns, "outside")
	if err != nil {
		t.Fatal(err)
	}
	cond := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionAccepted)
	if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != v1alpha1.ReasonInvalid ||
		cond.Message != verdict.Error() || cond.ObservedGeneration != cur.Generation {
		t.Fatalf("condition %+v, want Accepted=False Invalid %q", cond, verdict)
	}
	if got.Status.ObservedGeneration != cur.Generation {
		t.Fatalf("observedGeneration %d, want %d", got.Status.ObservedGeneration, cur.Generation)
	}
	if !strings.Contains(cond.Message, "10.0.0.0/8 is not inside cidr 192.168.0.0/16") {
		t.Fatalf("message %q does not say what is wrong", cond.Message)
	}

	// The Warning Event on the object, through the events API.
	cs := clientset(t, cfg)
	sel := fields.Set{"regarding.name": "outside", "regarding.kind": v1alpha1.KindMeshNetworkPolicy, "reason": crd.EventReasonInvalid}.AsSelector().String()
	var ev eventsv1.Event
	eventually(ctx, t, "Event on the invalid policy", func() (bool, string) {
		list, err := cs.EventsV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false, err.Error()
		}
		if len(list.Items) == 0 {
			return false, "no Event yet"
		}
		ev = list.Items[0]
		return true, ""
	})
	if ev.Type != "Warning" || ev.Action != crd.EventActionValidate || ev.ReportingController != crd.ReportingController ||
		ev.Regarding.UID != cur.UID || !strings.Contains(ev.Note, "10.0.0.0/8 is not inside cidr") {
		t.Fatalf("event %+v", ev)
	}

	// The same verdict again: nothing written.
	if err := w.ReportMeshNetworkPolicy(ctx, cur, verdict); err != nil {
		t.Fatal(err)
	}
	again, err := c.GetMeshNetworkPolicy(ctx, ns, "outside")
	if err != nil {
		t.Fatal(err)
	}
	if again.ResourceVersion != got.ResourceVersion {
		t.Fatalf("reporting the same verdict wrote the object (resourceVersion %s -> %s)", got.ResourceVersion, again.ResourceVersion)
	}

	// A verdict on a stale copy (an older generation) is dropped.
	fixed := again.DeepCopy()
	fixed.Spec.Ingress[0].From[0].IPBlock.Except = []string{"192.168.1.0/24"}
	if err := c.RESTClient().Put().Namespace(ns).Resource(v1alpha1.ResourceMeshNetworkPolicies).Name("outside").Body(fixed).Do(ctx).Into(fixed); err != nil {
		t.Fatal(err)
	}
	if fixed.Generation == cur.Generation {
		t.Fatalf("generation did not change: %d", fixed.Generation)
	}
	if err := w.ReportMeshNetworkPolicy(ctx, cur, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetMeshNetworkPolicy(ctx, ns, "outside"); err != nil || got.Status.ObservedGeneration != cur.Generation {
		t.Fatalf("a stale report was written: %+v, %v", got.Status, err)
	}

	// The fixed policy is accepted.
	doc, err = fixed.Document()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Parse(doc); err != nil {
		t.Fatalf("fixed policy: %v", err)
	}
	if err := w.ReportMeshNetworkPolicy(ctx, fixed, nil); err != nil {
		t.Fatal(err)
	}
	got, err = c.GetMeshNetworkPolicy(ctx, ns, "outside")
	if err != nil {
		t.Fatal(err)
	}
	cond = meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionAccepted)
	if cond == nil || cond.Status != metav1.ConditionTrue || cond.Reason != v1alpha1.ReasonValid ||
		got.Status.ObservedGeneration != fixed.Generation || cond.ObservedGeneration != fixed.Generation {
		t.Fatalf("after the fix: %+v", got.Status)
	}

	// A policy deleted meanwhile is no error.
	if err := c.RESTClient().Delete().Namespace(ns).Resource(v1alpha1.ResourceMeshNetworkPolicies).Name("outside").Do(ctx).Error(); err != nil {
		t.Fatal(err)
	}
	if err := w.ReportMeshNetworkPolicy(ctx, got, verdict); err != nil {
		t.Fatalf("report on a deleted policy: %v", err)
	}
}

// TestReportNetworkPolicy: a Kubernetes NetworkPolicy that fails
// meshplane's validation gets a Warning Event.
func TestReportNetworkPolicy(t *testing.T) {
	cfg := installed(t)
	ctx := testContext(t)
	ns := kube.Namespace(t)
	w := newWriter(t, cfg)
	cs := clientset(t, cfg)

	// More matchLabels than policy.MaxSelectorTerms: Kubernetes takes it,
	// meshplane does not.
	sel := metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := range policy.MaxSelectorTerms + 1 {
		sel.MatchLabels["k"+strings.Repeat("x", i%5)+string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	np, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "wide"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: sel},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := yaml.Marshal(struct {
		APIVersion string                         `json:"apiVersion"`
		Kind       string                         `json:"kind"`
		Metadata   metav1.ObjectMeta              `json:"metadata"`
		Spec       networkingv1.NetworkPolicySpec `json:"spec"`
	}{"networking.k8s.io/v1", "NetworkPolicy", np.ObjectMeta, np.Spec})
	if err != nil {
		t.Fatal(err)
	}
	_, verdict := policy.Parse(manifest)
	if !errors.Is(verdict, policy.ErrInvalid) {
		t.Fatalf("policy.Parse: %v, want ErrInvalid", verdict)
	}
	w.ReportNetworkPolicy(np, verdict)
	w.ReportNetworkPolicy(np, verdict) // the same verdict: no second Event

	fs := fields.Set{"regarding.name": "wide", "regarding.kind": "NetworkPolicy", "reason": crd.EventReasonInvalid}.AsSelector().String()
	eventually(ctx, t, "Event on the invalid NetworkPolicy", func() (bool, string) {
		list, err := cs.EventsV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fs})
		if err != nil {
			return false, err.Error()
		}
		for _, ev := range list.Items {
			if ev.Type == "Warning" && ev.Regarding.UID == np.UID && strings.Contains(ev.Note, "at most") {
				return true, ""
			}
		}
		return false, "no matching Event yet"
	})
}
