package crd_test

import (
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshplane/meshplane/controlplane/k8s/crd"
	"github.com/meshplane/meshplane/kubetest"
)

// TestMissingPermissions: without RBAC permissions, Install and the view
// writers fail with the API server's Forbidden, which names the verb and
// the resource, and say what to do.
func TestMissingPermissions(t *testing.T) {
	installed(t)
	ctx := testContext(t)
	u := kube.NewUser(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", kube.KubeconfigFor(t, u))
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = crd.Install(ctx, dyn, time.Minute)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `"customresourcedefinitions"`) ||
		!strings.Contains(err.Error(), "grant it to the control plane's service account") {
		t.Fatalf("install without permissions: %v", err)
	}

	// Allowed to list the views but not to write them.
	kube.Grant(t, u, kubetest.Rule{APIGroups: []string{"meshplane.io"}, Resources: []string{"meshnodes"}, Verbs: []string{"list"}})
	w := newWriter(t, cfg)
	_, err = w.SyncNodes(ctx, []crd.Node{{Name: "node-rbac"}})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `cannot create resource "meshnodes"`) {
		t.Fatalf("sync without create permission: %v", err)
	}
	_, err = w.SyncIdentities(ctx, nil)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `cannot list resource "meshidentities"`) {
		t.Fatalf("sync without list permission: %v", err)
	}
}
