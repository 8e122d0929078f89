package crd

import (
	"context"
	"fmt"
	"unicode/utf8"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/meshplane/meshplane/controlplane/k8s/apis/v1alpha1"
)

// Event reasons and actions of policy verdicts.
const (
	// EventReasonInvalid is the reason of the Warning Event on a policy
	// that fails meshplane's validation.
	EventReasonInvalid = "InvalidPolicy"
	// EventActionValidate is the action of that Event.
	EventActionValidate = "Validate"
)

// Limits the API server puts on what we write: an Event's note is at most
// 1 kB; a condition's message at most 32 kB.
const (
	maxEventNote        = 1024
	maxConditionMessage = 32 * 1024
)

// ReportMeshNetworkPolicy records meshplane's verdict on a
// MeshNetworkPolicy: verdict is the error of policy.Parse for obj (nil:
// valid). It sets status.observedGeneration and the Accepted condition
// (True, reason Valid; or False, reason Invalid, with the error as the
// message) through the status subresource, and for an invalid policy
// emits a Warning Event (reason InvalidPolicy) on the object. It writes
// nothing, and emits no Event, when the status already says so for obj's
// generation, so the control plane may report on every resync.
//
// obj is the object as the caller saw it (an informer's copy; it is not
// modified). If the object has changed since, the status is written on
// the current object as long as its generation (its spec) is the same;
// a verdict on an older generation is dropped, since the newer one will
// be reported. A policy that no longer exists is no error.
func (w *Writer) ReportMeshNetworkPolicy(ctx context.Context, obj *v1alpha1.MeshNetworkPolicy, verdict error) error {
	cond := metav1.Condition{
		Type:               v1alpha1.ConditionAccepted,
		Status:             metav1.ConditionTrue,
		Reason:             v1alpha1.ReasonValid,
		Message:            "meshplane validated the policy and handed it to the agents",
		ObservedGeneration: obj.Generation,
	}
	if verdict != nil {
		cond.Status = metav1.ConditionFalse
		cond.Reason = v1alpha1.ReasonInvalid
		cond.Message = truncate(verdict.Error(), maxConditionMessage)
	}
	const r = v1alpha1.ResourceMeshNetworkPolicies
	cur := obj
	emitted := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if cur == nil {
			got, err := w.client.GetMeshNetworkPolicy(ctx, obj.Namespace, obj.Name)
			if err != nil {
				return err
			}
			cur = got
		}
		if cur.Generation != obj.Generation || cur.UID != obj.UID {
			return nil // a newer spec (or a new object): its own report follows
		}
		if cur.Status.ObservedGeneration == obj.Generation && sameCondition(cur.Status.Conditions, cond) {
			return nil
		}
		next := cur.DeepCopy()
		next.Status.ObservedGeneration = obj.Generation
		meta.SetStatusCondition(&next.Status.Conditions, cond)
		err := w.client.update(ctx, r, next.Namespace, next.Name, true, next, &v1alpha1.MeshNetworkPolicy{})
		if err != nil {
			cur = nil // re-read on conflict
			return err
		}
		if verdict != nil && !emitted {
			emitted = true
			w.recorder.Eventf(next, nil, "Warning", EventReasonInvalid, EventActionValidate, "%s",
				truncate("meshplane cannot enforce this policy: "+verdict.Error(), maxEventNote))
		}
		return nil
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("report meshnetworkpolicy %s/%s: %w", obj.Namespace, obj.Name, rbacHint(err))
	}
	return nil
}

// ReportNetworkPolicy records meshplane's verdict on a Kubernetes
// NetworkPolicy, which has no status of ours: for an invalid policy, a
// Warning Event (reason InvalidPolicy) on it, once per UID, generation
// and message in this Writer's lifetime (a new leader reports again once;
// the events API merges the repeat into the Event's series). A valid
// verdict clears the memory of the policy.
func (w *Writer) ReportNetworkPolicy(np *networkingv1.NetworkPolicy, verdict error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if verdict == nil {
		delete(w.reported, np.UID)
		return
	}
	key := fmt.Sprintf("%d/%s", np.Generation, verdict.Error())
	if w.reported[np.UID] == key {
		return
	}
	w.reported[np.UID] = key
	w.recorder.Eventf(np, nil, "Warning", EventReasonInvalid, EventActionValidate, "%s",
		truncate("meshplane cannot enforce this policy: "+verdict.Error(), maxEventNote))
}

// ForgetNetworkPolicy drops what the Writer remembers of a deleted
// NetworkPolicy.
func (w *Writer) ForgetNetworkPolicy(np *networkingv1.NetworkPolicy) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.reported, np.UID)
}

// sameCondition reports whether conds holds c (type, status, reason,
// message and observed generation).
func sameCondition(conds []metav1.Condition, c metav1.Condition) bool {
	got := meta.FindStatusCondition(conds, c.Type)
	return got != nil && got.Status == c.Status && got.Reason == c.Reason &&
		got.Message == c.Message && got.ObservedGeneration == c.ObservedGeneration
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = " [truncated]"
	s = s[:n-len(mark)]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + mark
}
