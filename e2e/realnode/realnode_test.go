package realnode_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/kubenode"
)

const ns = "default"

func probePod(name string) *corev1.Pod {
	no := false
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "probe", Image: kubenode.ProbeImage, ImagePullPolicy: corev1.PullNever,
				Args: []string{"serve"},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

// waitRunning polls until the pod is Ready with an IP.
func (m *Meshplane) waitRunning(ctx context.Context, t *testing.T, name string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	err := poll(ctx, func() (bool, string) {
		var err error
		p, err = m.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.Status.PodIP != "" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("phase %s ip %q conditions %v", p.Status.Phase, p.Status.PodIP, p.Status.Conditions)
	})
	if err != nil {
		evs, _ := m.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		var msgs []string
		if evs != nil {
			for _, e := range evs.Items {
				msgs = append(msgs, e.Reason+": "+e.Message)
			}
		}
		t.Fatalf("pod %s not running: %v; events:\n%s", name, err, strings.Join(msgs, "\n"))
	}
	return p
}

// endpoints are the agent's local endpoints by "namespace/pod".
func (m *Meshplane) endpoints(ctx context.Context) (map[string]*api.LocalEndpoint, error) {
	r, err := m.Agent.ListEndpoints(ctx, &api.ListEndpointsRequest{})
	if err != nil {
		return nil, err
	}
	eps := map[string]*api.LocalEndpoint{}
	for _, e := range r.Endpoints {
		eps[e.Namespace+"/"+e.Pod] = e
	}
	return eps, nil
}

func (m *Meshplane) ipamUsed(ctx context.Context, t *testing.T) uint64 {
	t.Helper()
	st, err := m.Agent.Status(ctx, &api.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return st.Ipam.GetUsed()
}

// exec runs the probe binary in a pod with kubectl exec.
func (m *Meshplane) exec(ctx context.Context, pod string, args ...string) (string, error) {
	out, err := m.Node.Kubectl(ctx, append([]string{"exec", "-n", ns, pod, "--", "/probe"}, args...)...)
	return strings.TrimSpace(string(out)), err
}

// expectHTTP polls `probe get` from pod to url until it succeeds
// (allowed) or fails (not allowed), within a minute.
func (m *Meshplane) expectHTTP(t *testing.T, from, url string, allowed bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out string
	err := poll(ctx, func() (bool, string) {
		var err error
		out, err = m.exec(ctx, from, "get", url)
		if allowed {
			return err == nil && strings.HasPrefix(out, "hello from "), fmt.Sprintf("%q %v", out, err)
		}
		// The probe's own error (not kubectl's): the request timed out.
		return err != nil && strings.Contains(out, `Get "`+url), fmt.Sprintf("%q %v", out, err)
	})
	if err != nil {
		verb := "allowed"
		if !allowed {
			verb = "blocked"
		}
		t.Fatalf("%s -> %s not %s: %v", from, url, verb, err)
	}
	return out
}

// expectDropped checks that the agent's flow history has a packet from
// pod src to pod dst that the datapath dropped for policy.
func (m *Meshplane) expectDropped(t *testing.T, src, dst string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := m.Agent.Observe(ctx, &api.ObserveRequest{Last: 4096, Pod: dst, Verdict: "dropped"})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for {
		f, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if f.SourcePod == src && f.DestinationPod == dst && strings.Contains(f.DropReason, "policy") {
			return
		}
		seen = append(seen, fmt.Sprintf("%s -> %s %s", f.SourcePod, f.DestinationPod, f.DropReason))
	}
	t.Fatalf("no policy drop %s -> %s in the agent's flows; dropped: %v", src, dst, seen)
}

// TestRealNode runs meshplane on a real kubelet (see the package doc):
// three pods (server, client, other) get their addresses from mesh-cni
// and the agent, reach each other over HTTP and TCP, reach the server
// through a ClusterIP Service, a NetworkPolicy denying all ingress to the
// server blocks both clients and one allowing app=client lets client
// (only) in again; deleting the pods releases their IPs and veths; the
// cleanup overlay's commands uninstall it all.
func TestRealNode(t *testing.T) {
	t0 := time.Now()
	m := StartMeshplane(t, kubenode.Config{Name: "realnode"})
	n := m.Node
	t.Logf("node Ready with meshplane after %v (node %v, install-cni %v, agent ok %v, control plane %v, Ready %v); pod CIDR %s",
		time.Since(t0).Round(time.Millisecond), m.Timings.Node.Round(time.Millisecond), m.Timings.CNI.Round(time.Millisecond),
		m.Timings.Agent.Round(time.Millisecond), m.Timings.ControlPlane.Round(time.Millisecond), m.Timings.NodeReady.Round(time.Millisecond), m.PodCIDR)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	usedBefore := m.ipamUsed(ctx, t)
	// containerd reloads the conf dir on each write event: the installer
	// never leaves the conflist empty or half-written in between.
	if log := n.Log("containerd"); strings.Contains(log, "failed to reload cni configuration") {
		t.Errorf("containerd read a partial conflist during install-cni:\n%s", grepLines(log, "failed to reload cni configuration"))
	}

	names := []string{"server", "client", "other"}
	t1 := time.Now()
	for _, name := range names {
		if _, err := m.Kube.CoreV1().Pods(ns).Create(ctx, probePod(name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pods := map[string]*corev1.Pod{}
	for _, name := range names {
		pods[name] = m.waitRunning(ctx, t, name)
	}
	t.Logf("3 pods Ready after %v", time.Since(t1).Round(time.Millisecond))

	// Their IPs are the agent's: in its pod CIDR, one endpoint each.
	eps, err := m.endpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		p := pods[name]
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !m.PodCIDR.Contains(ip) {
			t.Fatalf("pod %s has IP %q, not in the agent's pod CIDR %s", name, p.Status.PodIP, m.PodCIDR)
		}
		ep := eps[ns+"/"+name]
		if ep == nil || !slices.Contains(ep.Ips, ip.String()) || ep.ContainerId == "" {
			t.Fatalf("the agent's endpoint of pod %s is %v; want one with IP %s and a container ID (all: %v)", name, ep, ip, eps)
		}
		if _, err := n.NS.Netlink().LinkByIndex(int(ep.Ifindex)); err != nil {
			t.Fatalf("pod %s: host side of its veth (ifindex %d): %v", name, ep.Ifindex, err)
		}
	}
	if used := m.ipamUsed(ctx, t); used != usedBefore+3 {
		t.Errorf("IPAM uses %d addresses with 3 pods; %d before", used, usedBefore)
	}
	serverIP, clientIP := pods["server"].Status.PodIP, pods["client"].Status.PodIP

	t.Run("pod to pod", func(t *testing.T) {
		out := m.expectHTTP(t, "client", "http://"+serverIP+":8080/from-client", true)
		if !strings.Contains(out, "remote="+clientIP+":") {
			t.Errorf("server saw %q; want remote=%s:...", out, clientIP)
		}
		out, err := m.exec(ctx, "other", "echo", serverIP+":9000", "ping-tcp-echo")
		if err != nil || out != "ping-tcp-echo" {
			t.Fatalf("other -> server TCP echo: %q, %v", out, err)
		}
	})

	t.Run("ClusterIP service", func(t *testing.T) {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": "server"},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		}
		svc, err := m.Kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t2 := time.Now()
		out := m.expectHTTP(t, "client", "http://"+svc.Spec.ClusterIP+"/via-service", true)
		if !strings.Contains(out, "remote="+clientIP+":") || !strings.Contains(out, serverIP) {
			t.Errorf("through the Service: %q; want the server (%s) seeing the client's address %s", out, serverIP, clientIP)
		}
		t.Logf("ClusterIP %s answered %v after the Service was created", svc.Spec.ClusterIP, time.Since(t2).Round(time.Millisecond))
	})

	// The kubernetes Service (no kube-proxy, no
	// ProxyKubernetesService): the control plane publishes it with the
	// apiserver's endpoint (the node's address), the datapath translates
	// it, so in-cluster clients reach the apiserver.
	t.Run("kubernetes Service", func(t *testing.T) {
		addr := n.KubernetesServiceIP.String() + ":443"
		err := poll(ctx, func() (bool, string) {
			out, err := m.exec(ctx, "client", "dial", addr)
			return err == nil && out == "connected", fmt.Sprintf("%q %v", out, err)
		})
		if err != nil {
			t.Fatalf("client -> %s: %v", addr, err)
		}
	})

	t.Run("NetworkPolicy", func(t *testing.T) {
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "server", Namespace: ns},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			},
		}
		np, err := m.Kube.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t2 := time.Now()
		url := "http://" + serverIP + ":8080/"
		m.expectHTTP(t, "client", url, false)
		t.Logf("deny-all ingress enforced %v after create", time.Since(t2).Round(time.Millisecond))
		m.expectHTTP(t, "other", url, false)
		m.expectDropped(t, "default/client", "default/server")
		// The node itself (the kubelet's probes) still gets in: an
		// isolated pod always admits traffic from its node.
		conn, err := n.Dial(ctx, "tcp", serverIP+":8080")
		if err != nil {
			t.Errorf("node -> server under deny-all ingress: %v; want it allowed (kubelet probes)", err)
		} else {
			_ = conn.Close()
		}
		if p, err := m.Kube.CoreV1().Pods(ns).Get(ctx, "server", metav1.GetOptions{}); err != nil || !podReady(p) {
			t.Errorf("server under deny-all ingress: ready %v (%v); want the kubelet's probe to pass", p != nil && podReady(p), err)
		}

		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
		}}
		if _, err := m.Kube.NetworkingV1().NetworkPolicies(ns).Update(ctx, np, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		t2 = time.Now()
		m.expectHTTP(t, "client", url, true)
		t.Logf("allow from app=client enforced %v after update", time.Since(t2).Round(time.Millisecond))
		m.expectHTTP(t, "other", url, false)
		if err := m.Kube.NetworkingV1().NetworkPolicies(ns).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		m.expectHTTP(t, "other", url, true)
	})

	t.Run("pod delete", func(t *testing.T) {
		for _, name := range names {
			if err := m.Kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		err := poll(ctx, func() (bool, string) {
			var left []string
			for _, name := range names {
				if _, err := m.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
					left = append(left, "pod "+name)
				}
				if ep := eps[ns+"/"+name]; ep != nil {
					if _, err := n.NS.Netlink().LinkByIndex(int(ep.Ifindex)); err == nil {
						left = append(left, "veth of "+name)
					}
				}
			}
			now, err := m.endpoints(ctx)
			if err != nil {
				return false, err.Error()
			}
			for k := range now {
				left = append(left, "endpoint "+k)
			}
			st, err := m.Agent.Status(ctx, &api.StatusRequest{})
			if err != nil {
				return false, err.Error()
			}
			if used := st.Ipam.GetUsed(); used != usedBefore {
				left = append(left, fmt.Sprintf("%d IPs in use (%d before)", used, usedBefore))
			}
			return len(left) == 0, strings.Join(left, ", ")
		})
		if err != nil {
			t.Fatalf("after deleting the pods: %v", err)
		}
	})

	// The cleanup overlay's uninstall-cni: the config and the plugin go,
	// the node turns NotReady (the rest of the uninstall, remove-pins,
	// runs in the cleanup, once the agent is stopped).
	t.Run("uninstall", func(t *testing.T) {
		t.Logf("uninstall-cni: %s; remove-pins (at cleanup): %s", strings.Join(m.UninstallCommand, " "), strings.Join(m.CleanupCommand, " "))
		if err := m.Uninstall(ctx); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{filepath.Join(n.CNIConfDir, "05-meshplane.conflist"), filepath.Join(n.CNIBinDir, "mesh-cni")} {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s after uninstall: %v", p, err)
			}
		}
		err := poll(ctx, func() (bool, string) {
			node, err := m.Kube.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					return c.Status != corev1.ConditionTrue, fmt.Sprintf("Ready=%s %s", c.Status, c.Message)
				}
			}
			return false, "no Ready condition"
		})
		if err != nil {
			t.Fatalf("node after uninstall-cni: %v", err)
		}
	})
}

// grepLines are the lines of s that contain substr.
func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
