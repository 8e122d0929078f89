package crd_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshplane/meshplane/controlplane/k8s/crd"
	"github.com/meshplane/meshplane/kubetest"
)

// kube is one kube-apiserver for the package's tests (kubetest.RunMain,
// which also checks for leaked goroutines). Tests share it: the CRDs are
// installed once, and only one test writes each cluster-scoped kind.
var kube *kubetest.Server

func TestMain(m *testing.M) { os.Exit(kubetest.RunMain(m, &kube)) }

func restConfig(t *testing.T) *rest.Config {
	t.Helper()
	kube.Require(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", kube.Kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	return cfg
}

var (
	installOnce sync.Once
	installErr  error
)

// installed installs the CRDs once for the package and returns the admin's
// REST configuration.
func installed(t *testing.T) *rest.Config {
	t.Helper()
	cfg := restConfig(t)
	installOnce.Do(func() {
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			installErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		installErr = crd.Install(ctx, dyn, time.Minute)
	})
	if installErr != nil {
		t.Fatalf("install CRDs: %v", installErr)
	}
	return cfg
}

// newWriter returns a Writer closed when the test ends.
func newWriter(t *testing.T, cfg *rest.Config) *crd.Writer {
	t.Helper()
	w, err := crd.New(crd.Config{REST: cfg})
	if err != nil {
		t.Fatalf("crd.New: %v", err)
	}
	t.Cleanup(w.Close)
	return w
}

func clientset(t *testing.T, cfg *rest.Config) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds, failing the test at ctx's end
// with the last reason it gave.
func eventually(ctx context.Context, t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: never happened: %s", what, why)
		case <-tick.C:
		}
	}
}
