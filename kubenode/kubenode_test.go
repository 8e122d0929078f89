package kubenode_test

import (
	"context"
	"debug/elf"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshplane/meshplane/kubenode"
	"github.com/meshplane/meshplane/kubenode/image"
)

var intstr8080 = intstr.FromInt32(8080)

// clientset is a client-go clientset of the node's apiserver, from the
// host's namespace through the node's dialer.
func clientset(t *testing.T, n *kubenode.Node) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(&rest.Config{
		Host: n.Host, BearerToken: n.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: n.CAPEM},
		Dial:            n.Dial,
	})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func probePod(name string, args ...string) *corev1.Pod {
	no := false
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "probe", Image: kubenode.ProbeImage, ImagePullPolicy: corev1.PullNever,
				Args: args,
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr8080}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

// waitRunning polls until the pod is Ready with an IP and returns it.
func waitRunning(ctx context.Context, t *testing.T, cs *kubernetes.Clientset, name string) *corev1.Pod {
	t.Helper()
	var last string
	for ctx.Err() == nil {
		p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			last = fmt.Sprintf("phase %s ip %q conditions %v", p.Status.Phase, p.Status.PodIP, p.Status.Conditions)
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.Status.PodIP != "" {
					return p
				}
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatalf("pod %s not running: %v (last: %s)", name, ctx.Err(), last)
	return nil
}

// waitGone polls until the pod is gone from the apiserver.
func waitGone(ctx context.Context, t *testing.T, cs *kubernetes.Clientset, name string) {
	t.Helper()
	for ctx.Err() == nil {
		_, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatalf("pod %s not gone: %v", name, ctx.Err())
}

// TestNode starts a node with the standard bridge network, runs two pods
// that reach each other through `kubectl exec` (the apiserver-kubelet
// path), deletes them and checks that their IPs and namespaces are
// released, then installs a second network with InstallCNI and checks
// that a new pod gets its address from it.
func TestNode(t *testing.T) {
	t0 := time.Now()
	n := kubenode.Start(t, kubenode.Config{})
	t.Logf("node up: apiserver ready after %v, node Ready after %v", n.Timings.APIServer.Round(time.Millisecond), n.Timings.NodeReady.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := clientset(t, n)
	netnsBefore := netnsNames(t)

	for _, name := range []string{"server", "client"} {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, probePod(name, "serve"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	server := waitRunning(ctx, t, cs, "server")
	t.Logf("first pod Running after %v (since Start)", time.Since(t0).Round(time.Millisecond))
	client := waitRunning(ctx, t, cs, "client")
	var ips []netip.Addr
	for _, p := range []*corev1.Pod{server, client} {
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !n.PodCIDR.Contains(ip) {
			t.Fatalf("pod %s has IP %q, not in the pod range %s", p.Name, p.Status.PodIP, n.PodCIDR)
		}
		ips = append(ips, ip)
	}
	held, err := n.PodIPAllocations()
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range ips {
		if !slices.Contains(held, ip) {
			t.Errorf("host-local holds %v, not pod IP %s", held, ip)
		}
	}

	out, err := n.Kubectl(ctx, "exec", "client", "--", "/probe", "get", "http://"+server.Status.PodIP+":8080/from-client")
	if err != nil {
		t.Fatal(err)
	}
	if want := "hello from server "; !strings.HasPrefix(string(out), want) || !strings.Contains(string(out), "remote="+client.Status.PodIP+":") {
		t.Fatalf("client -> server: %q; want %q... remote=%s:...", out, want, client.Status.PodIP)
	}
	out, err = n.Kubectl(ctx, "exec", "client", "--", "/probe", "echo", server.Status.PodIP+":9000", "ping-tcp-echo")
	if err != nil || strings.TrimSpace(string(out)) != "ping-tcp-echo" {
		t.Fatalf("client -> server TCP echo: %q, %v", out, err)
	}
	// The kubernetes Service reaches the apiserver once proxied.
	if err := n.ProxyKubernetesService(ctx); err != nil {
		t.Fatal(err)
	}
	out, err = n.Kubectl(ctx, "exec", "client", "--", "/probe", "dial", n.KubernetesServiceIP.String()+":443")
	if err != nil || strings.TrimSpace(string(out)) != "connected" {
		t.Fatalf("client -> kubernetes Service: %q, %v", out, err)
	}
	// The test process reaches a pod too, from the node's namespace.
	conn, err := n.Dial(ctx, "tcp", server.Status.PodIP+":9000")
	if err != nil {
		t.Fatalf("dial the server pod from the node's namespace: %v", err)
	}
	_ = conn.Close()

	// Delete: the kubelet stops the sandboxes, CNI DEL releases the IPs,
	// and the pods' network namespaces go.
	for _, name := range []string{"server", "client"} {
		if err := cs.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"server", "client"} {
		waitGone(ctx, t, cs, name)
	}
	if err := pollUntil(ctx, func() (bool, string) {
		held, err := n.PodIPAllocations()
		if err != nil {
			return false, err.Error()
		}
		extra := netnsNames(t)
		for ns := range netnsBefore {
			delete(extra, ns)
		}
		var cniNS []string
		for ns := range extra {
			if strings.HasPrefix(ns, "cni-") {
				cniNS = append(cniNS, ns)
			}
		}
		return len(held) == 0 && len(cniNS) == 0, fmt.Sprintf("IPs held %v, new sandbox namespaces %v", held, cniNS)
	}); err != nil {
		t.Fatalf("after the pods were deleted: %v", err)
	}

	// The manifests' image, with stand-ins for the binaries (the probe
	// under each name): its layout imports and runs.
	t.Run("MeshplaneImage", func(t *testing.T) {
		if dir := os.Getenv("MESHPLANE_LAB_BIN"); dir != "" {
			if static(filepath.Join(dir, "mesh-cni")) {
				realMeshplaneImage(ctx, t, n, cs, dir)
				return
			}
			t.Logf("%s/mesh-cni is not a static binary (build with CGO_ENABLED=0): stand-ins instead", dir)
		}
		bin := t.TempDir()
		probe, err := os.ReadFile(n.ProbeBinary)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range image.MeshplaneBinaries {
			if err := os.WriteFile(filepath.Join(bin, b), probe, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		spec, err := image.Meshplane(bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.ImportSpec(ctx, spec); err != nil {
			t.Fatal(err)
		}
		pod := probePod("meshplane-image", "serve")
		pod.Spec.Containers[0].Image = image.MeshplaneName
		pod.Spec.Containers[0].Command = []string{"/usr/local/bin/mesh-agent"}
		if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRunning(ctx, t, cs, "meshplane-image")
		if err := cs.CoreV1().Pods("default").Delete(ctx, "meshplane-image", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitGone(ctx, t, cs, "meshplane-image")
	})

	t.Run("InstallCNI", func(t *testing.T) {
		second := netip.MustParsePrefix("10.245.0.0/24")
		c := kubenode.Bridge{
			Network: "kubenode-second", Bridge: "kn-br1", PodCIDR: second,
			IPAMDir: filepath.Join(n.Dir, "cni", "ipam-second"), ConfName: "05-second.conflist",
		}.CNI()
		if err := n.InstallCNI(c); err != nil {
			t.Fatal(err)
		}
		// containerd picks the config up within seconds; until then a pod
		// may still get the old network, so poll with fresh pods.
		for i := 0; ; i++ {
			name := fmt.Sprintf("second-%d", i)
			if _, err := cs.CoreV1().Pods("default").Create(ctx, probePod(name, "serve"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			p := waitRunning(ctx, t, cs, name)
			ip := netip.MustParseAddr(p.Status.PodIP)
			if second.Contains(ip) {
				t.Logf("pod %s got %s from the new network", name, ip)
				break
			}
			if i >= 10 {
				t.Fatalf("pod %s got %s, not from the new network %s", name, ip, second)
			}
			if err := cs.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			waitGone(ctx, t, cs, name)
		}
		// The old config is gone from the conf dir.
		ents, err := os.ReadDir(n.CNIConfDir)
		if err != nil || len(ents) != 1 || ents[0].Name() != c.ConfName {
			t.Fatalf("conf dir holds %v (%v); want only %s", ents, err, c.ConfName)
		}
	})
}

// TestNodeNoCNI starts a node without a network, as a test of a CNI
// plugin does: the node registers NotReady, and is Ready once InstallCNI
// gives it the standard network (written after containerd started:
// containerd picks it up), and a pod runs.
func TestNodeNoCNI(t *testing.T) {
	n := kubenode.Start(t, kubenode.Config{NoCNI: true, Name: "nocni", PodCIDR: netip.MustParsePrefix("10.246.0.0/24")})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := clientset(t, n)
	node, err := cs.CoreV1().Nodes().Get(ctx, "nocni", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			t.Fatalf("node Ready without a network: %+v", c)
		}
	}
	t0 := time.Now()
	if err := n.InstallCNI(n.StandardCNI().CNI()); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("node Ready %v after InstallCNI", time.Since(t0).Round(time.Millisecond))
	if _, err := cs.CoreV1().Pods("default").Create(ctx, probePod("one", "serve"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := waitRunning(ctx, t, cs, "one")
	if ip := netip.MustParseAddr(p.Status.PodIP); !n.PodCIDR.Contains(ip) {
		t.Fatalf("pod IP %s not in %s", ip, n.PodCIDR)
	}
	// The pod is left for the node's cleanup to delete.
}

// static reports whether path is an ELF executable without an
// interpreter (no libc needed: it runs in the meshplane image).
func static(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// realMeshplaneImage imports the meshplane image from the binaries of
// MESHPLANE_LAB_BIN (CGO_ENABLED=0 builds) and runs mesh-cni VERSION in a
// pod of it.
func realMeshplaneImage(ctx context.Context, t *testing.T, n *kubenode.Node, cs *kubernetes.Clientset, dir string) {
	spec, err := image.Meshplane(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.ImportSpec(ctx, spec); err != nil {
		t.Fatal(err)
	}
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "mesh-cni-version", Namespace: "default"},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: &no, RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "cni", Image: image.MeshplaneName, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/usr/local/bin/mesh-cni"},
				Env:     []corev1.EnvVar{{Name: "CNI_COMMAND", Value: "VERSION"}},
			}},
		},
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pollUntil(ctx, func() (bool, string) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return p.Status.Phase == corev1.PodSucceeded, string(p.Status.Phase)
	}); err != nil {
		t.Fatalf("mesh-cni VERSION in the meshplane image: %v (binaries built with CGO_ENABLED=0?)", err)
	}
	out, err := n.Kubectl(ctx, "logs", pod.Name)
	if err != nil || !strings.Contains(string(out), `"supportedVersions"`) {
		t.Fatalf("mesh-cni VERSION printed %q (%v)", out, err)
	}
}

func pollUntil(ctx context.Context, f func() (bool, string)) error {
	var last string
	for {
		ok, why := f()
		if ok {
			return nil
		}
		last = why
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// netnsNames are the names under /run/netns now.
func netnsNames(t *testing.T) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m
}
