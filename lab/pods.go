package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/cni"
	"github.com/meshplane/meshplane/service"
)

// AddPod starts a pod on a node, as a CNI ADD would (netns, veth,
// AddEndpoint, addresses and routes), starts its echo server, updates the
// services that select it, and waits until every agent of the cluster
// has it in its ipcache and services.
func (l *Lab) AddPod(ctx context.Context, cluster, node string, p PodSpec) (Pod, error) {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	l.mu.Lock()
	c, cerr := l.st.Topology.cluster(cluster)
	ns, nerr := l.st.node(cluster, node)
	var dup error
	if cerr == nil && nerr == nil {
		if _, err := l.st.findPod(cluster + "/" + p.Namespace + "/" + p.Name); err == nil {
			dup = fmt.Errorf("pod %s/%s/%s: %w", cluster, p.Namespace, p.Name, ErrExists)
		}
	}
	l.mu.Unlock()
	if err := errors.Join(cerr, nerr, dup); err != nil {
		return Pod{}, err
	}
	p = clonePodSpec(p)
	if err := c.validatePod(l.st.Name, "pod", &p); err != nil {
		return Pod{}, err
	}
	ps, err := l.addPod(ctx, c, ns, p)
	if err != nil {
		if ps != nil {
			err = errors.Join(err, l.removePod(context.WithoutCancel(ctx), ps), l.syncCluster(context.WithoutCancel(ctx), cluster))
		}
		return Pod{}, err
	}
	l.mu.Lock()
	for i := range c.Nodes {
		if c.Nodes[i].Name == node {
			c.Nodes[i].Pods = append(c.Nodes[i].Pods, p)
		}
	}
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return Pod{}, err
	}
	if err := l.syncCluster(ctx, cluster); err != nil {
		return Pod{}, err
	}
	if err := l.waitSynced(ctx, cluster, nil); err != nil {
		return Pod{}, err
	}
	return ps.Pod, nil
}

// DeletePod stops a pod's echo server, deletes its endpoint (the CNI
// DEL), its veth and namespace, updates the services that selected it and
// waits until the cluster's agents have forgotten it.
func (l *Lab) DeletePod(ctx context.Context, ref string) error {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	l.mu.Lock()
	ps, err := l.st.findPod(ref)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	ip := ps.IP
	if err := l.removePod(ctx, ps); err != nil {
		return err
	}
	l.mu.Lock()
	c, cerr := l.st.Topology.cluster(ps.Cluster)
	if cerr == nil {
		for i := range c.Nodes {
			c.Nodes[i].Pods = slices.DeleteFunc(c.Nodes[i].Pods, func(p PodSpec) bool {
				return c.Nodes[i].Name == ps.Node && p.Namespace == ps.Namespace && p.Name == ps.Name
			})
		}
	}
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return err
	}
	if err := l.syncCluster(ctx, ps.Cluster); err != nil {
		return err
	}
	var gone []netip.Addr
	if ip.IsValid() {
		gone = append(gone, ip)
	}
	return l.waitSynced(ctx, ps.Cluster, gone)
}

func clonePodSpec(p PodSpec) PodSpec {
	b, _ := json.Marshal(p)
	var out PodSpec
	_ = json.Unmarshal(b, &out)
	return out
}

// addPod makes one pod. The pod is recorded in the state first, so that
// Down (or removePod, for AddPod) finds whatever a failure left.
func (l *Lab) addPod(ctx context.Context, c *Cluster, ns *nodeState, spec PodSpec) (*podState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	name := podNetnsName(l.st.Name, c.Name, spec.Namespace, spec.Name)
	dir := filepath.Join(l.clusterDir(c.Name), "pods", spec.Namespace)
	ps := &podState{
		Pod: Pod{
			Cluster: c.Name, Node: ns.Name, Namespace: spec.Namespace, Name: spec.Name,
			Netns: netnsPath(name), Labels: spec.Labels, Ports: spec.Ports,
		},
		HostVeth:  hostVethName(c.Name, spec.Namespace, spec.Name),
		EchoLog:   filepath.Join(dir, spec.Name+".log"),
		EchoReady: filepath.Join(dir, spec.Name+".ready"),
	}
	l.mu.Lock()
	l.st.Pods = append(l.st.Pods, ps)
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return ps, err
	}
	// The pod's metadata reaches etcd before the CNI ADD, as the control
	// plane writes it when Kubernetes schedules the pod.
	if err := l.syncCluster(ctx, c.Name); err != nil {
		return ps, err
	}
	if _, err := createNetns(name); err != nil {
		return ps, err
	}
	if err := setSysctls(ps.Netns, hostSysctls, true); err != nil {
		return ps, err
	}
	// The wiring is the CNI plugin's (package cni), with the node's
	// namespace as the host.
	link, err := cni.CreateVeth(cni.VethSpec{HostNetns: ns.Netns, HostName: ps.HostVeth, PodNetns: ps.Netns, PodIfName: ifaceName})
	if err != nil {
		return ps, err
	}
	req := &api.AddEndpointRequest{
		Namespace: spec.Namespace, Pod: spec.Name, ContainerId: "lab-" + shortHash(12, l.st.Name, c.Name, spec.Namespace, spec.Name),
		Netns: ps.Netns, Ifname: ifaceName, Ifindex: uint32(link.HostIndex),
		Mac: link.PodMAC.String(), NodeMac: link.HostMAC.String(),
	}
	// On Kubernetes the request names the pod only, as a CNI plugin's
	// does: the agent takes its labels and ports from the metadata the
	// control plane writes.
	if !c.Kubernetes {
		req.Labels = spec.Labels
		for _, n := range c.Namespaces {
			if n.Name == spec.Namespace {
				req.NamespaceLabels = n.Labels
			}
		}
		for _, port := range spec.Ports {
			req.Ports = append(req.Ports, &api.ContainerPort{Name: port.Name, Port: uint32(port.Port), Protocol: port.Protocol})
		}
	}
	client, closeFn, err := dialAgent(ns.AgentSocket)
	if err != nil {
		return ps, err
	}
	defer closeFn()
	cctx, cancel := context.WithTimeout(ctx, syncTimeout)
	resp, err := client.AddEndpoint(cctx, req)
	cancel()
	if err != nil {
		return ps, fmt.Errorf("AddEndpoint on node %s/%s: %w", ns.Cluster, ns.Name, err)
	}
	ip, err := firstIPv4(resp.Ips)
	if err != nil {
		return ps, fmt.Errorf("AddEndpoint on node %s/%s: %w", ns.Cluster, ns.Name, err)
	}
	gw, err := firstIPv4(resp.Gateways)
	if err != nil {
		return ps, fmt.Errorf("AddEndpoint on node %s/%s: gateway: %w", ns.Cluster, ns.Name, err)
	}
	// Recorded at once: from here on, removing the pod means a
	// DeleteEndpoint too.
	l.mu.Lock()
	ps.IP, ps.Identity, ps.EndpointID = ip, resp.Identity, resp.EndpointId
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return ps, err
	}
	if resp.Mtu > 0 {
		if err := cni.SetMTU(ns.Netns, ps.Netns, link, int(resp.Mtu)); err != nil {
			return ps, err
		}
	}
	if err := cni.ConfigurePod(ps.Netns, ifaceName, []cni.PodIP{{IP: ip, Gateway: gw}}, link.HostMAC); err != nil {
		return ps, err
	}
	if err := cni.RouteToPod(ns.Netns, ps.HostVeth, []netip.Addr{ip}, link.PodMAC); err != nil {
		return ps, err
	}
	setPID := func(pid int) { ps.EchoPID = pid }
	if err := l.startEcho(ctx, ps.Netns, ps.Ref(), ps.Ports, ps.EchoLog, ps.EchoReady, setPID); err != nil {
		return ps, err
	}
	l.progress("pod %s on %s: %s, identity %d", ps.Ref(), ns.Name, ip, resp.Identity)
	return ps, l.save()
}

// startEcho starts the echo server of a pod or an external (in netns,
// answering name) on its ports and waits until it listens; setPID records
// its PID, under l.mu. Without ports there is none.
func (l *Lab) startEcho(ctx context.Context, netns, name string, ports []PortSpec, logPath, ready string, setPID func(int)) error {
	var tcp, udp []string
	for _, p := range ports {
		if p.Protocol == "UDP" {
			udp = append(udp, strconv.Itoa(p.Port))
		} else {
			tcp = append(tcp, strconv.Itoa(p.Port))
		}
	}
	if len(tcp)+len(udp) == 0 {
		return nil
	}
	_ = os.Remove(ready)
	argv := []string{
		l.st.Meshctl, "lab", "nsexec", "--netns=" + netns, "--",
		l.st.Meshctl, "lab", "echo", "--name=" + name, "--ready-file=" + ready,
	}
	if len(tcp) > 0 {
		argv = append(argv, "--tcp="+strings.Join(tcp, ","))
	}
	if len(udp) > 0 {
		argv = append(argv, "--udp="+strings.Join(udp, ","))
	}
	pid, err := spawn(argv, logPath)
	if err != nil {
		return fmt.Errorf("echo server: %w", err)
	}
	l.mu.Lock()
	setPID(pid)
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		if _, err := os.Stat(ready); err == nil {
			return nil
		}
		if exited(pid) {
			return fmt.Errorf("echo server exited; its log (%s) ends:\n%s", logPath, logTail(logPath, 10))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("echo server not listening after %s: %w; see %s", readyTimeout, ctx.Err(), logPath)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// removePod undoes addPod, as far as it got.
func (l *Lab) removePod(ctx context.Context, ps *podState) error {
	l.mu.Lock()
	ns, err := l.st.node(ps.Cluster, ps.Node)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if ps.IP.IsValid() && !alive(ns.AgentPID, l.st.Dir) {
		return fmt.Errorf("pod %s: the agent of node %s/%s is stopped: start it (StartAgent) before deleting the pod", ps.Ref(), ns.Cluster, ns.Name)
	}
	var errs []error
	if err := stopProc(ctx, ps.EchoPID, l.st.Dir, stopGrace); err != nil {
		errs = append(errs, err)
	}
	if ps.IP.IsValid() {
		client, closeFn, err := dialAgent(ns.AgentSocket)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, syncTimeout)
		_, err = client.DeleteEndpoint(cctx, &api.DeleteEndpointRequest{Namespace: ps.Namespace, Pod: ps.Name})
		cancel()
		closeFn()
		if err != nil {
			return fmt.Errorf("DeleteEndpoint %s on node %s/%s: %w", ps.Ref(), ns.Cluster, ns.Name, err)
		}
	}
	if err := cni.Remove(ns.Netns, ps.HostVeth); err != nil {
		errs = append(errs, err)
	}
	if err := deleteNetns(filepath.Base(ps.Netns)); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(ps.EchoReady); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pod %s: %w", ps.Ref(), err)
	}
	l.mu.Lock()
	l.st.Pods = slices.DeleteFunc(l.st.Pods, func(p *podState) bool { return p == ps })
	l.mu.Unlock()
	return l.save()
}

// serviceValues computes the cluster's services as the agents read them
// from etcd (see buildService).
func (l *Lab) serviceValues(cluster string) ([]service.Service, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, err := l.st.Topology.cluster(cluster)
	if err != nil {
		return nil, err
	}
	var out []service.Service
	for _, spec := range c.Services {
		svc, err := l.st.buildService(cluster, spec)
		if err != nil {
			return nil, err
		}
		out = append(out, svc)
	}
	return out, nil
}

// waitSynced waits until every running agent of the cluster has every pod
// of the cluster (with its identity) in its ipcache, none of gone, and
// every service frontend with exactly its backends: then a probe right
// after Up or AddPod sees the datapath as the lab describes it.
func (l *Lab) waitSynced(ctx context.Context, cluster string, gone []netip.Addr) error {
	svcs, err := l.serviceValues(cluster)
	if err != nil {
		return err
	}
	want := map[string][]string{}
	for _, s := range svcs {
		for _, fe := range s.Frontends {
			var bs []string
			for _, b := range fe.Backends {
				bs = append(bs, b.Address.String())
			}
			slices.Sort(bs)
			want[fe.Address.String()+"/"+strconv.Itoa(int(fe.Protocol.Number()))] = bs
		}
	}
	l.mu.Lock()
	cs, err := l.st.cluster(cluster)
	pods := map[netip.Addr]uint32{}
	for _, p := range l.st.Pods {
		if p.Cluster == cluster && p.IP.IsValid() {
			pods[p.IP] = p.Identity
		}
	}
	var nodes []*nodeState
	if err == nil {
		nodes = slices.Clone(cs.Nodes)
	}
	l.mu.Unlock()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	for _, n := range nodes {
		if !alive(n.AgentPID, l.st.Dir) {
			continue
		}
		var last string
		for {
			last = agentSynced(ctx, n, pods, gone, want)
			if last == "" {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("node %s/%s: the agent's maps do not match the lab after %s: %s", n.Cluster, n.Name, syncTimeout, last)
			case <-time.After(pollInterval):
			}
		}
	}
	return nil
}

// agentSynced says what one agent's maps lack, or "" if nothing.
func agentSynced(ctx context.Context, n *nodeState, pods map[netip.Addr]uint32, gone []netip.Addr, want map[string][]string) string {
	client, closeFn, err := dialAgent(n.AgentSocket)
	if err != nil {
		return err.Error()
	}
	defer closeFn()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ipc, err := client.DumpIPCache(cctx, &api.DumpRequest{})
	if err != nil {
		return err.Error()
	}
	have := map[netip.Addr]uint32{}
	for {
		chunk, err := ipc.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err.Error()
		}
		for _, e := range chunk.Entries {
			if p, err := netip.ParsePrefix(e.Prefix); err == nil && p.IsSingleIP() {
				have[p.Addr()] = e.Identity
			}
		}
	}
	for ip, id := range pods {
		if got, ok := have[ip]; !ok || got != id {
			return fmt.Sprintf("ipcache: %s has identity %d, want %d", ip, got, id)
		}
	}
	for _, ip := range gone {
		if _, ok := have[ip]; ok {
			return fmt.Sprintf("ipcache: %s is still there", ip)
		}
	}
	svc, err := client.DumpServices(cctx, &api.DumpRequest{})
	if err != nil {
		return err.Error()
	}
	got := map[string][]string{}
	for {
		chunk, err := svc.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err.Error()
		}
		for _, e := range chunk.Entries {
			bs := slices.Clone(e.Backends)
			slices.Sort(bs)
			got[e.Frontend+"/"+strconv.Itoa(int(e.Protocol))] = bs
		}
	}
	for fe, bs := range want {
		if !slices.Equal(got[fe], bs) {
			return fmt.Sprintf("services: %s has backends %v, want %v", fe, got[fe], bs)
		}
	}
	return ""
}
