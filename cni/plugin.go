package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/api/agentjson"
)

// Versions are the CNI spec versions the plugin speaks (results are
// converted down for the older ones).
var Versions = version.All

// About is what the plugin says of itself to CNI_COMMAND=VERSION's
// neighbours (skel prints it for a bare invocation).
const About = "mesh-cni: the meshplane CNI plugin (asks mesh-agent for the pod's IPs and identity)"

// Funcs returns the plugin's commands, for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}
}

// errPluginNotAvailable is the spec's code 50 (STATUS: the plugin cannot
// serve ADD), which types does not name.
const errPluginNotAvailable uint = 50

// undoTimeout bounds what a failed ADD does to undo itself, after the
// command's own deadline may have passed.
const undoTimeout = 10 * time.Second

// Error converts an error of the plugin into the CNI error the runtime
// reports (in kubelet's events): its code says whether to try again.
// A nil err is nil.
func Error(err error) error {
	var te *types.Error
	if err == nil {
		return nil
	}
	if errors.As(err, &te) {
		return te
	}
	code := uint(types.ErrInternal)
	switch {
	case errors.Is(err, ErrConfig):
		code = types.ErrInvalidNetworkConfig
	case errors.Is(err, ErrAgentDown), errors.Is(err, ErrAgentNotReady), errors.Is(err, ErrNoMetadata):
		code = types.ErrTryAgainLater
	}
	return types.NewError(code, "mesh-cni: "+err.Error(), "")
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return Error(err)
	}
	pod, ok, err := parseArgs(args.Args)
	if err != nil {
		return Error(err)
	}
	if !ok {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			"mesh-cni: CNI_ARGS names no pod (K8S_POD_NAMESPACE and K8S_POD_NAME): mesh-cni wires Kubernetes pods, and the runtime (containerd, CRI-O) passes them", "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(conf.Timeout))
	defer cancel()
	res, err := Add(ctx, conf, Attachment{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, Namespace: pod.namespace, Pod: pod.name})
	if err != nil {
		return Error(err)
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// Attachment is what the runtime asks to attach: a container's interface
// in its network namespace, for a pod.
type Attachment struct {
	ContainerID string
	IfName      string
	Netns       string
	Namespace   string
	Pod         string
}

func (a Attachment) pod() podRef { return podRef{namespace: a.Namespace, name: a.Pod} }

// Add is the ADD command: the veth, the agent's endpoint, the pod's
// addresses and routes; it returns the CNI result. On failure it undoes
// what it did (the agent's endpoint, the veth), so nothing is left behind
// and no IP stays allocated.
func Add(ctx context.Context, conf NetConf, at Attachment) (_ *current.Result, err error) {
	ag, err := dialAgent(ctx, conf.Socket)
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", at.pod(), err)
	}
	defer func() { _ = ag.Close() }()
	// One handle in each namespace for all the steps.
	w, err := openWiring("", at.Netns)
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", at.pod(), err)
	}
	defer w.close()
	host := HostVethName(at.ContainerID, at.IfName)
	v, err := w.createVeth(VethSpec{HostName: host, PodNetns: at.Netns, PodIfName: at.IfName, ContainerID: at.ContainerID})
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", at.pod(), err)
	}
	sent := false
	defer func() {
		if err == nil {
			return
		}
		var errs []error
		if sent {
			// Scoped to the container: an endpoint the pod has for
			// another container (ErrEndpointExists) stays.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
			derr := ag.DeleteEndpoint(uctx, &agentjson.DeleteEndpointRequest{Namespace: at.Namespace, Pod: at.Pod, ContainerID: at.ContainerID})
			cancel()
			if derr != nil {
				errs = append(errs, fmt.Errorf("undo: %w (the pod's IPs stay allocated until a DEL)", ag.fromStatus("DeleteEndpoint", derr)))
			}
		}
		if rerr := remove(w.host, host); rerr != nil {
			errs = append(errs, fmt.Errorf("undo: %w", rerr))
		}
		err = errors.Join(append([]error{err}, errs...)...)
	}()
	sent = true
	resp, err := ag.AddEndpoint(ctx, &agentjson.AddEndpointRequest{
		Namespace: at.Namespace, Pod: at.Pod, ContainerID: at.ContainerID, Netns: at.Netns, Ifname: at.IfName,
		Ifindex: uint32(v.HostIndex), MAC: v.PodMAC.String(), NodeMAC: v.HostMAC.String(),
	})
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", at.pod(), ag.fromStatus("AddEndpoint", err))
	}
	ips, err := pairIPs(resp.IPs, resp.Gateways)
	if err != nil {
		return nil, fmt.Errorf("ADD %s: mesh-agent's answer: %w", at.pod(), err)
	}
	if resp.MTU > 0 {
		if err := w.setMTU(v, int(resp.MTU)); err != nil {
			return nil, fmt.Errorf("ADD %s: %w", at.pod(), err)
		}
	}
	if err := w.configurePod(at.Netns, at.IfName, v.PodIndex, ips, v.HostMAC); err != nil {
		return nil, fmt.Errorf("ADD %s: %w", at.pod(), err)
	}
	addrs := make([]netip.Addr, 0, len(ips))
	for _, p := range ips {
		addrs = append(addrs, p.IP)
	}
	if err := w.routeToPod("", host, v.HostIndex, addrs, v.PodMAC); err != nil {
		return nil, fmt.Errorf("ADD %s: %w", at.pod(), err)
	}
	return result(at, v, ips, int(resp.MTU)), nil
}

// pairIPs pairs the agent's IPs with the gateways of their families.
func pairIPs(ips, gateways []string) ([]PodIP, error) {
	var gws []netip.Addr
	for _, s := range gateways {
		gw, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("gateway %q: not an IP address", s)
		}
		gws = append(gws, gw)
	}
	var out []PodIP
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("pod IP %q: not an IP address", s)
		}
		i := slices.IndexFunc(gws, func(g netip.Addr) bool { return g.Is4() == ip.Is4() })
		if i < 0 {
			return nil, fmt.Errorf("pod IP %s has no gateway of its family", ip)
		}
		out = append(out, PodIP{IP: ip, Gateway: gws[i]})
	}
	if len(out) == 0 {
		return nil, errors.New("no pod IP")
	}
	return out, nil
}

// result is the CNI result of an ADD: the host side (no sandbox), the pod
// side, its addresses and its default routes.
func result(at Attachment, v Veth, ips []PodIP, mtu int) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: v.HostName, Mac: v.HostMAC.String(), Mtu: mtu},
			{Name: at.IfName, Mac: v.PodMAC.String(), Sandbox: at.Netns, Mtu: mtu},
		},
	}
	for _, p := range ips {
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: current.Int(1), Address: *ipNet(netip.PrefixFrom(p.IP, hostBits(p.IP))), Gateway: p.Gateway.AsSlice(),
		})
		res.Routes = append(res.Routes, &types.Route{Dst: *defaultRoute(p.IP), GW: p.Gateway.AsSlice()})
	}
	return res
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return Error(err)
	}
	pod, _, err := parseArgs(args.Args)
	if err != nil {
		return Error(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(conf.Timeout))
	defer cancel()
	return Error(Del(ctx, conf, Attachment{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, Namespace: pod.namespace, Pod: pod.name}))
}

// Del is the DEL command: it deletes the attachment's endpoint in the
// agent and its veth. It succeeds for an attachment that is gone or was
// never (fully) made, and without the netns. Without the pod's name (no
// K8S_POD_* arguments) it finds the endpoint by container ID. With the
// agent down it still removes the veth, and fails: the pod's IPs are
// released only by the agent, and the runtime retries DEL.
func Del(ctx context.Context, conf NetConf, at Attachment) error {
	host := HostVethName(at.ContainerID, at.IfName)
	ag, err := dialAgent(ctx, conf.Socket)
	if err != nil {
		return errors.Join(fmt.Errorf("DEL %s: %w; the pod's IPs stay allocated until it answers (the runtime retries DEL)", at.ContainerID, err), Remove("", host))
	}
	defer func() { _ = ag.Close() }()
	var refs []podRef
	if at.Namespace != "" && at.Pod != "" {
		refs = append(refs, at.pod())
	} else {
		list, err := ag.ListEndpoints(ctx, &agentjson.ListEndpointsRequest{ContainerID: at.ContainerID})
		if err != nil {
			return errors.Join(fmt.Errorf("DEL %s: %w", at.ContainerID, ag.fromStatus("ListEndpoints", err)), Remove("", host))
		}
		for _, ep := range list.Endpoints {
			refs = append(refs, podRef{namespace: ep.Namespace, name: ep.Pod})
		}
	}
	var errs []error
	for _, p := range refs {
		err := ag.DeleteEndpoint(ctx, &agentjson.DeleteEndpointRequest{Namespace: p.namespace, Pod: p.name, ContainerID: at.ContainerID})
		if err != nil {
			errs = append(errs, fmt.Errorf("DEL %s: %w", p, ag.fromStatus("DeleteEndpoint", err)))
		}
	}
	if err := Remove("", host); err != nil {
		errs = append(errs, fmt.Errorf("DEL %s: %w", at.ContainerID, err))
	}
	return errors.Join(errs...)
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return Error(err)
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return Error(fmt.Errorf("%w: prevResult: %w", ErrConfig, err))
	}
	if conf.PrevResult == nil {
		return Error(fmt.Errorf("%w: CHECK needs prevResult (the result of the ADD)", ErrConfig))
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return Error(fmt.Errorf("%w: prevResult: %w", ErrConfig, err))
	}
	pod, ok, err := parseArgs(args.Args)
	if err != nil {
		return Error(err)
	}
	if !ok {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "mesh-cni: CNI_ARGS names no pod (K8S_POD_NAMESPACE and K8S_POD_NAME)", "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(conf.Timeout))
	defer cancel()
	return Error(Check(ctx, conf, Attachment{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, Namespace: pod.namespace, Pod: pod.name}, prev))
}

// Check is the CHECK command: the agent has the attachment's endpoint
// (namespace, pod, container ID) with the addresses of prev, the veth's
// host side is up, and the pod's interface is up with those addresses and
// a default route through each gateway.
func Check(ctx context.Context, conf NetConf, at Attachment, prev *current.Result) error {
	ag, err := dialAgent(ctx, conf.Socket)
	if err != nil {
		return fmt.Errorf("CHECK %s: %w", at.pod(), err)
	}
	defer func() { _ = ag.Close() }()
	list, err := ag.ListEndpoints(ctx, &agentjson.ListEndpointsRequest{ContainerID: at.ContainerID})
	if err != nil {
		return fmt.Errorf("CHECK %s: %w", at.pod(), ag.fromStatus("ListEndpoints", err))
	}
	i := slices.IndexFunc(list.Endpoints, func(ep agentjson.LocalEndpoint) bool {
		return ep.Namespace == at.Namespace && ep.Pod == at.Pod
	})
	if i < 0 {
		return fmt.Errorf("CHECK %s: mesh-agent has no endpoint for it with container %s", at.pod(), at.ContainerID)
	}
	ep := list.Endpoints[i]
	var want []netip.Prefix
	for _, c := range prev.IPs {
		p, ok := prefixOf(c.Address)
		if !ok {
			return fmt.Errorf("CHECK %s: prevResult address %s", at.pod(), c.Address.String())
		}
		want = append(want, p)
		if !slices.Contains(ep.IPs, p.Addr().String()) {
			return fmt.Errorf("CHECK %s: mesh-agent gives it %v, not %s", at.pod(), ep.IPs, p.Addr())
		}
	}
	host := HostVethName(at.ContainerID, at.IfName)
	hh, err := HandleAt("")
	if err != nil {
		return err
	}
	defer hh.Close()
	hl, err := hh.LinkByName(host)
	if err != nil {
		return fmt.Errorf("CHECK %s: host side %s: %w", at.pod(), host, err)
	}
	if hl.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("CHECK %s: host side %s is down", at.pod(), host)
	}
	ph, err := HandleAt(at.Netns)
	if err != nil {
		return fmt.Errorf("CHECK %s: %w", at.pod(), err)
	}
	defer ph.Close()
	pl, err := ph.LinkByName(at.IfName)
	if err != nil {
		return fmt.Errorf("CHECK %s: pod interface %s: %w", at.pod(), at.IfName, err)
	}
	if pl.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("CHECK %s: pod interface %s is down", at.pod(), at.IfName)
	}
	addrs, err := ph.AddrList(pl, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("CHECK %s: addresses of %s: %w", at.pod(), at.IfName, err)
	}
	for _, w := range want {
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { p, ok := prefixOf(*a.IPNet); return ok && p == w }) {
			return fmt.Errorf("CHECK %s: %s has no address %s", at.pod(), at.IfName, w)
		}
	}
	routes, err := ph.RouteList(pl, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("CHECK %s: routes of %s: %w", at.pod(), at.IfName, err)
	}
	for _, c := range prev.IPs {
		gw, ok := netip.AddrFromSlice(c.Gateway)
		if !ok {
			continue
		}
		gw = gw.Unmap()
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			g, ok := netip.AddrFromSlice(r.Gw)
			return ok && g.Unmap() == gw && (r.Dst == nil || isDefault(r.Dst))
		}) {
			return fmt.Errorf("CHECK %s: %s has no default route via %s", at.pod(), at.IfName, gw)
		}
	}
	return nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 || bits != ip.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones), true
}

func cmdGC(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return Error(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(conf.Timeout))
	defer cancel()
	_, err = GC(ctx, conf, conf.ValidAttachments)
	return Error(err)
}

// GC is the GC command: it deletes the agent's endpoints, and the veths,
// of attachments that valid (the runtime's cni.dev/valid-attachments)
// does not list, and returns the container IDs of what it removed.
// Endpoints without a container ID (not made by this plugin) stay.
func GC(ctx context.Context, conf NetConf, valid []types.GCAttachment) ([]string, error) {
	type key struct{ cid, ifname string }
	keep := make(map[key]bool, len(valid))
	keepCID := make(map[string]bool, len(valid))
	for _, v := range valid {
		keep[key{v.ContainerID, v.IfName}] = true
		keepCID[v.ContainerID] = true
	}
	stale := func(cid, ifname string) bool {
		if ifname == "" {
			return !keepCID[cid]
		}
		return !keep[key{cid, ifname}]
	}
	ag, err := dialAgent(ctx, conf.Socket)
	if err != nil {
		return nil, fmt.Errorf("GC: %w", err)
	}
	defer func() { _ = ag.Close() }()
	list, err := ag.ListEndpoints(ctx, &agentjson.ListEndpointsRequest{})
	if err != nil {
		return nil, fmt.Errorf("GC: %w", ag.fromStatus("ListEndpoints", err))
	}
	var removed []string
	var errs []error
	for _, ep := range list.Endpoints {
		if ep.ContainerID == "" || !stale(ep.ContainerID, ep.Ifname) {
			continue
		}
		err := ag.DeleteEndpoint(ctx, &agentjson.DeleteEndpointRequest{Namespace: ep.Namespace, Pod: ep.Pod, ContainerID: ep.ContainerID})
		if err != nil {
			errs = append(errs, fmt.Errorf("GC %s/%s: %w", ep.Namespace, ep.Pod, ag.fromStatus("DeleteEndpoint", err)))
			continue
		}
		removed = append(removed, ep.ContainerID)
		if ep.Ifname != "" {
			if err := Remove("", HostVethName(ep.ContainerID, ep.Ifname)); err != nil {
				errs = append(errs, fmt.Errorf("GC %s/%s: %w", ep.Namespace, ep.Pod, err))
			}
		}
	}
	// Veths whose ADD never reached the agent, or whose endpoint went.
	veths, err := attachedVeths("")
	if err != nil {
		errs = append(errs, fmt.Errorf("GC: %w", err))
	}
	for _, v := range veths {
		if !stale(v.containerID, v.ifname) {
			continue
		}
		if err := Remove("", v.name); err != nil {
			errs = append(errs, fmt.Errorf("GC: %w", err))
		} else if !slices.Contains(removed, v.containerID) {
			removed = append(removed, v.containerID)
		}
	}
	return removed, errors.Join(errs...)
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return Error(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(time.Duration(conf.Timeout), 10*time.Second))
	defer cancel()
	if err := Status(ctx, conf); err != nil {
		return types.NewError(errPluginNotAvailable, "mesh-cni: "+err.Error(), "")
	}
	return nil
}

// Status is the STATUS command: the plugin is ready iff the agent's
// socket answers Status.
func Status(ctx context.Context, conf NetConf) error {
	ag, err := dialAgent(ctx, conf.Socket)
	if err != nil {
		return fmt.Errorf("STATUS: %w", err)
	}
	defer func() { _ = ag.Close() }()
	if _, err := ag.Status(ctx); err != nil {
		return fmt.Errorf("STATUS: %w", ag.fromStatus("Status", err))
	}
	return nil
}

// WithNetnsCheck returns f with skel's check that CNI_NETNS is not the
// plugin's own network namespace (for ADD and CHECK) done by the plugin
// instead, and turns skel's off (CNI_NETNS_OVERRIDE), unless the runtime
// turned it off itself. Call it before skel.PluginMainFuncs.
//
// skel finds the plugin's namespace through /proc/<pid>/task/<tid>/ns/net;
// a short-lived process that opens an entry under its /proc/<pid>/task
// makes whoever reaps it walk those entries when it exits: 2 ms of the
// runtime's CPU per command, measured here, on every ADD. isOwnNetns asks
// a socket for its namespace instead.
func WithNetnsCheck(f skel.CNIFuncs) skel.CNIFuncs {
	if v := os.Getenv("CNI_NETNS_OVERRIDE"); strings.EqualFold(v, "true") || v == "1" {
		return f
	}
	if err := os.Setenv("CNI_NETNS_OVERRIDE", "1"); err != nil {
		return f // skel checks, then
	}
	guard := func(fn func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
		return func(args *skel.CmdArgs) error {
			own, err := isOwnNetns(args.Netns)
			if err != nil {
				return types.NewError(types.ErrInvalidNetNS, "get plugin's netns failed: "+err.Error(), "")
			}
			if own {
				return types.NewError(types.ErrInvalidNetNS, "plugin's netns and netns from CNI_NETNS should not be the same", "")
			}
			return fn(args)
		}
	}
	f.Add, f.Check = guard(f.Add), guard(f.Check)
	return f
}

// isOwnNetns reports whether the namespace file at path is this process's
// network namespace (SIOCGSKNS on a socket gives the latter without
// /proc). A path that cannot be opened is not: the command reports it.
func isOwnNetns(path string) (bool, error) {
	var pod unix.Stat_t
	if err := unix.Stat(path, &pod); err != nil {
		return false, nil
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer func() { _ = unix.Close(s) }()
	fd, err := unix.IoctlRetInt(s, unix.SIOCGSKNS)
	if err != nil {
		return false, fmt.Errorf("SIOCGSKNS: %w", err)
	}
	defer func() { _ = unix.Close(fd) }()
	var own unix.Stat_t
	if err := unix.Fstat(fd, &own); err != nil {
		return false, err
	}
	return own.Dev == pod.Dev && own.Ino == pod.Ino, nil
}
