package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/api"
)

// The routing modes of Config.RoutingMode, as Cilium's routingMode.
const (
	// RoutingTunnel makes pods on other nodes reachable through VXLAN
	// from the eBPF datapath: a flow-based VXLAN device (TunnelDevice),
	// routes to other nodes' pod CIDRs through it, and the datapath's
	// tunnel programs on it, which take the remote node from the ipcache.
	// It works whatever lies between the nodes (other subnets, routers),
	// as long as they reach each other's TunnelPort over UDP. The default.
	RoutingTunnel = "tunnel"
	// RoutingNative routes other nodes' pod CIDRs via their node
	// addresses: for nodes that reach each other directly (one L2
	// segment) or through routers that know the pod CIDRs. No
	// encapsulation, so the pods get the full underlay MTU.
	RoutingNative = "native"
	// RoutingNone programs no routes and no device: something else (a
	// test harness in a shared network namespace, an operator's routing
	// daemon) routes the pod CIDRs.
	RoutingNone = "none"
)

// Tunnel and route constants (docs/datapath.md, "Routing between nodes").
const (
	// TunnelDevice is the VXLAN device of tunnel mode.
	TunnelDevice = "mesh_vxlan"
	// DefaultTunnelPort is the VXLAN UDP port: Cilium's, not IANA's 4789,
	// so that a kernel VXLAN device of another tool on 4789 does not
	// collide.
	DefaultTunnelPort = 8472
	// TunnelOverhead is what VXLAN over an IPv4 underlay adds to each
	// packet: outer IPv4 (20), UDP (8), VXLAN (8) and the inner Ethernet
	// header (14).
	TunnelOverhead = 50
	// RouteProtocol marks the routes the agent owns (rtm_protocol, `ip
	// route show proto 109`): it lists, replaces and deletes only routes
	// of this protocol, and so never touches another's, and finds its own
	// after a restart. 109 is ASCII 'm'; iproute2's rt_protos and the
	// kernel's RTPROT_* leave it unassigned.
	RouteProtocol netlink.RouteProtocol = 109
)

// defaultUnderlayMTU is the underlay MTU assumed when no interface holds
// the node's address (Ethernet's).
const defaultUnderlayMTU = 1500

// routeRetry bounds the backoff of a failed route reconcile.
const (
	routeRetryMin = 500 * time.Millisecond
	routeRetryMax = 30 * time.Second
)

// nodeRoute is a route the agent wants: a pod CIDR of another node, via
// that node's address.
type nodeRoute struct {
	node string
	dst  netip.Prefix
	via  netip.Addr
}

// routing owns the node's routes to other nodes' pod CIDRs and, in
// tunnel mode, the VXLAN device. Its loop (run) is the only writer of
// routes of RouteProtocol; the mirror pokes it when a node record or a
// node's health changes, and it compares everything with the kernel on
// every pass (level-triggered), so a missed poke costs at most the
// resync interval.
//
// mu guards the status fields; the netlink handle is used by run only
// (setup runs before it starts).
type routing struct {
	mode   string
	port   int
	log    *slog.Logger
	nodeIP netip.Addr // the underlay's address: its interface's MTU is the underlay MTU
	nl     *netlink.Handle
	poke   chan struct{}
	// routes returns the routes wanted now (the mirror's view of the
	// other nodes).
	routes func() []nodeRoute

	underlayMTU atomic.Int32 // 0: unknown
	tunnelIndex atomic.Int32 // the VXLAN device's ifindex in tunnel mode

	mu        sync.Mutex
	installed int               // mu guards: routes of ours in the kernel after the last pass
	skipped   map[string]string // node -> why it has no route (native: not on-link)
	lastErr   error             // the last pass's failure, nil when it worked
}

// newRouting opens a netlink handle in the agent's network namespace.
func newRouting(mode string, port int, nodeIP netip.Addr, log *slog.Logger) (*routing, error) {
	r := &routing{mode: mode, port: port, nodeIP: nodeIP, log: log, routes: func() []nodeRoute { return nil }, poke: make(chan struct{}, 1), skipped: map[string]string{}}
	if mode == RoutingNone {
		return r, nil
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("routing: netlink: %w", err)
	}
	r.nl = h
	return r, nil
}

func (r *routing) close() {
	if r.nl != nil {
		r.nl.Close()
	}
}

// pokeRoutes asks the loop for a pass, without blocking.
func (r *routing) pokeRoutes() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// readUnderlayMTU finds the MTU of the interface that holds the node's
// address.
func (r *routing) readUnderlayMTU() (int, error) {
	addrs, err := r.nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return 0, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap() != r.nodeIP.Unmap() {
			continue
		}
		l, err := r.nl.LinkByIndex(a.LinkIndex)
		if err != nil {
			return 0, fmt.Errorf("link of %s: %w", r.nodeIP, err)
		}
		return l.Attrs().MTU, nil
	}
	return 0, fmt.Errorf("no interface of this network namespace has the node address %s: pass the address the node's traffic leaves from (--node-ip)", r.nodeIP)
}

// setup prepares the mode's device: in tunnel mode it creates (or
// adopts) the VXLAN device and returns its ifindex for the tunnel
// programs; in native mode it removes a VXLAN device left by tunnel mode,
// and the routes through it go with it.
func (r *routing) setup() (int, error) {
	if r.mode == RoutingNone {
		return 0, nil
	}
	mtu, err := r.readUnderlayMTU()
	if err != nil {
		// Routes via the other nodes still work; only the MTU is a guess.
		// Set --mtu where it is wrong.
		r.log.Warn("cannot find the node's interface; assuming an underlay MTU of 1500", "mtu", defaultUnderlayMTU, "err", err)
		mtu = defaultUnderlayMTU
	}
	r.underlayMTU.Store(int32(mtu))
	old, err := r.nl.LinkByName(TunnelDevice)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		old = nil
	case err != nil:
		return 0, fmt.Errorf("routing: link %s: %w", TunnelDevice, err)
	}
	if r.mode == RoutingNative {
		if old != nil {
			if err := r.nl.LinkDel(old); err != nil {
				return 0, fmt.Errorf("routing: remove %s left by tunnel mode: %w", TunnelDevice, err)
			}
		}
		return 0, nil
	}
	want := mtu - TunnelOverhead
	if vx, ok := old.(*netlink.Vxlan); ok && vx.FlowBased && vx.Port == r.port {
		// Ours, from an earlier run: keep it (and the routes through it).
		if vx.MTU != want {
			if err := r.nl.LinkSetMTU(vx, want); err != nil {
				return 0, fmt.Errorf("routing: set %s MTU %d: %w", TunnelDevice, want, err)
			}
		}
	} else {
		if old != nil {
			// Another kind of device, or another port: made anew.
			if err := r.nl.LinkDel(old); err != nil {
				return 0, fmt.Errorf("routing: replace %s: %w", TunnelDevice, err)
			}
		}
		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: TunnelDevice, MTU: want},
			FlowBased: true, Port: r.port, Learning: false,
		}
		if err := r.nl.LinkAdd(vx); err != nil {
			return 0, fmt.Errorf("routing: create %s (flow-based VXLAN, UDP %d): %w", TunnelDevice, r.port, err)
		}
	}
	l, err := r.nl.LinkByName(TunnelDevice)
	if err != nil {
		return 0, fmt.Errorf("routing: link %s: %w", TunnelDevice, err)
	}
	// No IPv6 link-local address, so the kernel sends no neighbour
	// discovery through a device that carries IPv4 only (to_tunnel would
	// drop and count it). Best effort: without IPv6 there is nothing to do.
	_ = r.nl.LinkSetIP6AddrGenMode(l, 1 /* IN6_ADDR_GEN_MODE_NONE */)
	// Routed, not bridged: no ARP on the device (a neighbour of a NOARP
	// device resolves to the device's own MAC; from_tunnel on the other
	// side writes the real ones).
	if err := r.nl.LinkSetARPOff(l); err != nil {
		return 0, fmt.Errorf("routing: %s arp off: %w", TunnelDevice, err)
	}
	if err := r.nl.LinkSetUp(l); err != nil {
		return 0, fmt.Errorf("routing: set %s up: %w", TunnelDevice, err)
	}
	r.tunnelIndex.Store(int32(l.Attrs().Index))
	return l.Attrs().Index, nil
}

// run reconciles the routes until ctx ends: at once, on every poke, and
// every resync; a failed pass is retried with backoff.
func (r *routing) run(ctx context.Context, resync time.Duration) {
	if r.mode == RoutingNone {
		return
	}
	backoff := routeRetryMin
	for {
		wait := resync
		if err := r.reconcile(); err != nil {
			wait = backoff
			backoff = min(2*backoff, routeRetryMax)
		} else {
			backoff = routeRetryMin
		}
		select {
		case <-ctx.Done():
			return
		case <-r.poke:
		case <-time.After(wait):
		}
	}
}

// ourRoutes lists the kernel's routes of RouteProtocol in the main table.
func (r *routing) ourRoutes() ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	rs, err := r.nl.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		// An interrupted dump (ErrDumpInterrupted) may miss routes too:
		// the pass is retried.
		return nil, fmt.Errorf("list routes of protocol %d: %w", RouteProtocol, err)
	}
	return rs, nil
}

// kernelRoute is the route the kernel should hold for w.
func (r *routing) kernelRoute(w nodeRoute) *netlink.Route {
	rt := &netlink.Route{
		Dst:      &net.IPNet{IP: w.dst.Addr().AsSlice(), Mask: net.CIDRMask(w.dst.Bits(), w.dst.Addr().BitLen())},
		Gw:       w.via.AsSlice(),
		Protocol: RouteProtocol,
		Table:    unix.RT_TABLE_MAIN,
	}
	if r.mode == RoutingTunnel {
		// The gateway only names the neighbour (one per remote node, not
		// per pod); to_tunnel takes the remote end from the ipcache.
		rt.LinkIndex = int(r.tunnelIndex.Load())
		rt.Flags = int(netlink.FLAG_ONLINK)
	}
	return rt
}

// same reports whether the kernel's route k is what w wants.
func (r *routing) same(k netlink.Route, w nodeRoute) bool {
	gw, _ := netip.AddrFromSlice(k.Gw)
	if gw.Unmap() != w.via {
		return false
	}
	tunnel := k.LinkIndex == int(r.tunnelIndex.Load()) && k.LinkIndex != 0
	return tunnel == (r.mode == RoutingTunnel)
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, _ := netip.AddrFromSlice(n.IP)
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits)
}

// reconcile makes the kernel's routes of RouteProtocol the wanted ones:
// deletes the others, adds or replaces the missing and the changed. A
// native route whose gateway is not on a link of this node (another
// subnet) cannot be installed: its node is recorded as skipped, as
// Cilium skips direct routes to nodes off the L2 segment.
func (r *routing) reconcile() error {
	want := make(map[netip.Prefix]nodeRoute)
	for _, w := range r.routes() {
		if r.mode == RoutingTunnel && !w.dst.Addr().Is4() {
			continue // the tunnel carries IPv4: the datapath drops IPv6
		}
		want[w.dst] = w
	}
	have, err := r.ourRoutes()
	if err != nil {
		r.setResult(-1, nil, err)
		return err
	}
	var errs []error
	installed := 0
	for _, k := range have {
		dst := prefixOf(k.Dst)
		if w, ok := want[dst]; ok && r.same(k, w) {
			delete(want, dst)
			installed++
			continue
		}
		if _, ok := want[dst]; ok {
			continue // replaced below
		}
		if err := r.nl.RouteDel(&k); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", dst, err))
		}
	}
	skipped := make(map[string]string)
	for _, w := range want {
		err := r.nl.RouteReplace(r.kernelRoute(w))
		switch {
		case err == nil:
			installed++
		case r.mode == RoutingNative && (errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH)):
			skipped[w.node] = fmt.Sprintf("no route to its pod CIDR %s: its address %s is not on a link of this node (native routing needs the nodes on one L2 segment; use --routing-mode=tunnel)", w.dst, w.via)
		default:
			errs = append(errs, fmt.Errorf("route %s via %s (node %s): %w", w.dst, w.via, w.node, err))
		}
	}
	err = errors.Join(errs...)
	r.setResult(installed, skipped, err)
	return err
}

func (r *routing) setResult(installed int, skipped map[string]string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if installed >= 0 {
		for n, why := range skipped {
			if r.skipped[n] != why {
				r.log.Warn("native routing cannot reach a node", "node", n, "why", why)
			}
		}
		r.installed = installed
		r.skipped = skipped
	}
	if err != nil && (r.lastErr == nil || r.lastErr.Error() != err.Error()) {
		r.log.Error("cannot program the routes to other nodes' pods; retrying", "mode", r.mode, "err", err)
	}
	r.lastErr = err
}

// RoutingStatus is how the node reaches pods on other nodes.
type RoutingStatus struct {
	// Mode is RoutingTunnel, RoutingNative or RoutingNone.
	Mode string
	// TunnelDevice and TunnelPort are the VXLAN device and its UDP port
	// (tunnel mode only).
	TunnelDevice string
	TunnelPort   int
	// PodMTU is the MTU the CNI plugin gives pods; UnderlayMTU that of
	// the node's interface (0: unknown).
	PodMTU, UnderlayMTU int
	// Routes counts the routes of RouteProtocol installed.
	Routes int
	// Unreachable says, per node, why it has no route (native mode: not
	// on a link of this node).
	Unreachable []string
	// LastError is the last reconcile's failure, empty when it worked.
	LastError string
}

func (a *Agent) routingStatus() RoutingStatus {
	st := RoutingStatus{Mode: a.cfg.RoutingMode, PodMTU: a.podMTU()}
	r := a.routing
	if r == nil {
		return st
	}
	st.UnderlayMTU = int(r.underlayMTU.Load())
	if r.mode == RoutingTunnel {
		st.TunnelDevice, st.TunnelPort = TunnelDevice, r.port
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st.Routes = r.installed
	for n, why := range r.skipped {
		st.Unreachable = append(st.Unreachable, "node "+n+": "+why)
	}
	slices.Sort(st.Unreachable)
	if r.lastErr != nil {
		st.LastError = r.lastErr.Error()
	}
	return st
}

// routingReasons are the status reasons of the routing: a failed
// reconcile degrades the agent (pods on other nodes may be unreachable
// and a person must look). Nodes native routing cannot reach are in
// RoutingStatus.Unreachable and the log, not here: they are a property
// of the network the operator chose the mode for.
func routingReasons(st RoutingStatus) []string {
	if st.LastError == "" {
		return nil
	}
	return []string{"routing (" + st.Mode + "): " + strings.TrimSpace(st.LastError)}
}

// setupRouting opens the routing and prepares its device; in tunnel mode
// it attaches the tunnel programs to it, in the others it removes them.
func (a *Agent) setupRouting() (*routing, error) {
	rt, err := newRouting(a.cfg.RoutingMode, a.cfg.TunnelPort, a.cfg.NodeIPs[0], a.log)
	if err != nil {
		return nil, err
	}
	idx, err := rt.setup()
	if err != nil {
		rt.close()
		return nil, err
	}
	if dp := a.dp.dp; dp != nil && a.cfg.RoutingMode != RoutingNone {
		if idx > 0 {
			err = dp.AttachTunnel(idx)
		} else {
			err = dp.DetachTunnel()
		}
		if err != nil {
			rt.close()
			return nil, fmt.Errorf("routing: %w", err)
		}
	}
	a.routing = rt
	a.log.Info("routing", "mode", a.cfg.RoutingMode, "tunnelIfindex", rt.tunnelIndex.Load(), "underlayMTU", rt.underlayMTU.Load(), "podMTU", a.podMTU())
	return rt, nil
}

func routingMsg(st RoutingStatus) *api.RoutingStatus {
	return &api.RoutingStatus{
		Mode: st.Mode, TunnelDevice: st.TunnelDevice, TunnelPort: uint32(st.TunnelPort),
		PodMtu: uint32(st.PodMTU), UnderlayMtu: uint32(st.UnderlayMTU), Routes: uint32(st.Routes),
		Unreachable: st.Unreachable, LastError: st.LastError,
	}
}

// routingCollector reads the routing's state at scrape time.
type routingCollector struct{ a *Agent }

var (
	descRoutes      = prometheus.NewDesc("meshplane_routing_routes", "Routes to other nodes' pod CIDRs the agent has installed (route protocol 109), by routing mode.", []string{"mode"}, nil)
	descUnreachable = prometheus.NewDesc("meshplane_routing_unreachable_nodes", "Other nodes the routing mode cannot reach (native routing: their address is on no link of this node).", []string{"mode"}, nil)
	descPodMTU      = prometheus.NewDesc("meshplane_routing_pod_mtu_bytes", "The MTU pods get (the underlay's, less the tunnel's overhead in tunnel mode).", []string{"mode"}, nil)
)

func (routingCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRoutes
	ch <- descUnreachable
	ch <- descPodMTU
}

func (c routingCollector) Collect(ch chan<- prometheus.Metric) {
	if !c.a.started.Load() {
		return
	}
	st := c.a.routingStatus()
	ch <- prometheus.MustNewConstMetric(descRoutes, prometheus.GaugeValue, float64(st.Routes), st.Mode)
	ch <- prometheus.MustNewConstMetric(descUnreachable, prometheus.GaugeValue, float64(len(st.Unreachable)), st.Mode)
	ch <- prometheus.MustNewConstMetric(descPodMTU, prometheus.GaugeValue, float64(st.PodMTU), st.Mode)
}
