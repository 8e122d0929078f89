package kubetest_test

import (
	"context"
	"os"
	"regexp"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshplane/meshplane/kubetest"
)

var kube *kubetest.Server

func TestMain(m *testing.M) { os.Exit(kubetest.RunMain(m, &kube)) }

func clientFor(t *testing.T, kubeconfig string) *kubernetes.Clientset {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return c
}

func TestNamespaceAndPod(t *testing.T) {
	kube.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := clientFor(t, kube.Kubeconfig)

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "smoke", Labels: map[string]string{"team": "net"}}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "smoke", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName:           "node-a",
			ServiceAccountName: "web",
			Containers: []corev1.Container{{
				Name: "web", Image: "web:1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			}},
		},
	}
	if _, err := c.CoreV1().Pods("smoke").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}

	gotNS, err := c.CoreV1().Namespaces().Get(ctx, "smoke", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get namespace: %v", err)
	}
	if gotNS.Labels["team"] != "net" {
		t.Errorf("namespace labels = %v, want team=net", gotNS.Labels)
	}
	got, err := c.CoreV1().Pods("smoke").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod: %v", err)
	}
	if got.Spec.NodeName != "node-a" || got.Spec.ServiceAccountName != "web" || got.Labels["app"] != "web" {
		t.Errorf("pod = node %q sa %q labels %v, want node-a, web, app=web", got.Spec.NodeName, got.Spec.ServiceAccountName, got.Labels)
	}
	if p := got.Spec.Containers[0].Ports[0]; p.Name != "http" || p.ContainerPort != 8080 {
		t.Errorf("container port = %+v, want http 8080", p)
	}
}

func TestNamespaceHelper(t *testing.T) {
	kube.Require(t)
	name := kube.Namespace(t)
	c := clientFor(t, kube.Kubeconfig)
	if _, err := c.CoreV1().Namespaces().Get(context.Background(), name, metav1.GetOptions{}); err != nil {
		t.Fatalf("get namespace %s: %v", name, err)
	}
}

func TestLimitedUserForbidden(t *testing.T) {
	kube.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u := kube.NewUser(t)
	c := clientFor(t, kube.KubeconfigFor(t, u))

	_, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("list pods as %s: err = %v, want Forbidden", u.Name, err)
	}

	kube.Grant(t, u, kubetest.Rule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}})
	if _, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("list pods after grant: %v", err)
	}
	// The grant is of pods/list only.
	if _, err := c.CoreV1().Services("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list services: err = %v, want Forbidden", err)
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "nope"}}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("create namespace: err = %v, want Forbidden", err)
	}
}

// TestVersionMatchesBuild holds Version to the version that
// tools/kubernetes/go.mod (and so `make kube-apiserver`) builds.
func TestVersionMatchesBuild(t *testing.T) {
	b, err := os.ReadFile("../tools/kubernetes/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require k8s.io/kubernetes (\S+)$`).FindSubmatch(b)
	if m == nil || string(m[1]) != kubetest.Version {
		t.Fatalf("tools/kubernetes/go.mod requires k8s.io/kubernetes %q; kubetest.Version is %q", m, kubetest.Version)
	}
}
