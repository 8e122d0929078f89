package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/cni"
	"github.com/meshplane/meshplane/internal/netnsfile"
)

// netnsDir is where named network namespaces live, as iproute2 keeps them
// (ip netns list shows the lab's).
const netnsDir = "/run/netns"

// Interface names. The node side of a node's bridge link and the pod side
// of a pod's veth are both eth0 in their namespaces.
const (
	bridgeName = "br0"
	ifaceName  = "eth0"
)

// Names of the lab's network namespaces. After the prefix "mp-<lab>-"
// comes "lab", "n_...", "p_..." or "x_..." (externals): a lab name never
// has '_', so the
// namespaces of lab "demo-x" ("mp-demo-x-...") can never look like lab
// "demo"'s, and Down of one never touches the other's.
func netnsPrefix(lab string) string { return "mp-" + lab + "-" }

func labNetnsName(lab string) string { return netnsPrefix(lab) + "lab" }

func nodeNetnsName(lab, cluster, node string) string {
	return netnsPrefix(lab) + "n_" + cluster + "_" + node
}

func podNetnsName(lab, cluster, namespace, pod string) string {
	return netnsPrefix(lab) + "p_" + cluster + "_" + namespace + "_" + pod
}

func externalNetnsName(lab, name string) string {
	return netnsPrefix(lab) + "x_" + name
}

// routerNetnsName is the router between the lab's networks (labs with
// subnets only).
func routerNetnsName(lab string) string { return netnsPrefix(lab) + "router" }

// isLabNetns reports whether name is one of lab's namespaces.
func isLabNetns(lab, name string) bool {
	rest, ok := strings.CutPrefix(name, netnsPrefix(lab))
	return ok && (rest == "lab" || rest == "router" || strings.HasPrefix(rest, "n_") || strings.HasPrefix(rest, "p_") || strings.HasPrefix(rest, "x_"))
}

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// shortHash is n hex characters of a hash of parts: interface names must
// fit IFNAMSIZ (15 characters) whatever the names in the topology.
func shortHash(n int, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "/")))
	return hex.EncodeToString(h[:])[:n]
}

// hostVethName is the node side of a pod's veth: "lxc" and 11 hex
// characters, as Cilium names them.
func hostVethName(cluster, namespace, pod string) string {
	return "lxc" + shortHash(11, cluster, namespace, pod)
}

// bridgePortName is the lab-namespace side of a node's link to the bridge.
func bridgePortName(cluster, node string) string {
	return "veth" + shortHash(11, cluster, node)
}

// externalPortName is the lab-namespace side of an external's link to the
// bridge. The ':' keeps it apart from every bridgePortName: cluster names
// have none.
func externalPortName(name string) string {
	return "veth" + shortHash(11, "external:"+name)
}

// routerPortName is the lab-namespace side of the router's link to the
// bridge of a network ("" the lab's).
func routerPortName(subnet string) string {
	return "veth" + shortHash(11, "router:"+subnet)
}

// InNetns runs fn on an OS thread in the network namespace at path (a
// pod's, node's or external's Netns) and returns fn's error. Sockets fn
// makes belong to that namespace wherever they are used later; goroutines
// fn starts do not run in it. The thread is retired afterwards.
func InNetns(path string, fn func() error) error { return cni.InNetns(path, fn) }

// ErrExists is returned when something the lab would create is there
// already: a lab of the same name, or one of its namespaces.
var ErrExists = errors.New("already exists")

// createNetns makes a named network namespace, as `ip netns add` does: a
// new namespace bind-mounted on /run/netns/<name>, with /run/netns made a
// shared mount first (shareNetnsDir).
func createNetns(name string) (string, error) {
	path := netnsPath(name)
	if err := shareNetnsDir(); err != nil {
		return "", fmt.Errorf("create netns %s: %w", name, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create netns %s: %w: remove it with meshctl lab down, or ip netns del %s", name, ErrExists, name)
	}
	if err != nil {
		return "", fmt.Errorf("create netns %s: %w", name, err)
	}
	_ = f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread is in the new namespace for good
		// and is retired when the goroutine ends.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		errc <- unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "none", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return "", fmt.Errorf("create netns %s: %w", name, err)
	}
	return path, nil
}

// shareNetnsDir makes /run/netns a shared mount point, exactly as iproute2's
// ip netns add does: it makes it shared (MS_SHARED|MS_REC) and, when it is
// no mount point yet (EINVAL), bind-mounts it on itself (MS_BIND|MS_REC)
// and tries again. Then a namespace unmounted in one mount of /run/netns
// is unmounted in every copy of it: in the mount namespaces of container
// runtimes, and in the copy that another tool's bind of /run/netns over
// itself makes. Without it, such a bind hides the lab's mounts below a
// copy, and the files can be neither unmounted nor removed.
func shareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	for bound := false; ; bound = true {
		err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("make %s a shared mount (mount --make-rshared %s): %w", netnsDir, netnsDir, err)
		}
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("make %s a mount point (mount --rbind %s %s): %w", netnsDir, netnsDir, netnsDir, err)
		}
	}
}

// deleteNetns removes a named namespace, as `ip netns del` does
// (netnsfile.Delete). A namespace that is not there is not an error.
func deleteNetns(name string) error {
	if err := netnsfile.Delete(netnsPath(name)); err != nil {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// listLabNetns returns the names of lab's namespaces under /run/netns.
func listLabNetns(lab string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", netnsDir, err)
	}
	var out []string
	for _, e := range entries {
		if isLabNetns(lab, e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// routerSysctls make a node namespace a router: it forwards between the
// pods' veths and the bridge, and accepts packets whose source is routed
// elsewhere (a pod's reply through another node would fail rp_filter).
// They are set before any interface exists, so new ones inherit default.
var routerSysctls = map[string]string{
	"net/ipv4/ip_forward":             "1",
	"net/ipv4/conf/all/rp_filter":     "0",
	"net/ipv4/conf/default/rp_filter": "0",
}

// hostSysctls apply to every lab namespace: the lab is IPv4 only, and
// IPv6 link-local chatter (router solicitations, DAD) would only fill the
// flow logs.
var hostSysctls = map[string]string{
	"net/ipv6/conf/all/disable_ipv6":     "1",
	"net/ipv6/conf/default/disable_ipv6": "1",
}

// setSysctls writes /proc/sys entries from inside the namespace at path:
// /proc/sys/net shows the namespace of the thread that opens it. Entries
// the kernel lacks (no IPv6) are skipped when optional.
func setSysctls(path string, kv map[string]string, optional bool) error {
	return cni.InNetns(path, func() error {
		for k, v := range kv {
			err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644)
			if optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", strings.ReplaceAll(k, "/", "."), v, path, err)
			}
		}
		return nil
	})
}

// setupLabNetns creates the lab namespace and its bridges: br0 for the
// lab's network, and one per further name in bridges (the subnets').
func setupLabNetns(lab string, bridges ...string) (string, error) {
	path, err := createNetns(labNetnsName(lab))
	if err != nil {
		return "", err
	}
	if err := setSysctls(path, hostSysctls, true); err != nil {
		return path, err
	}
	h, err := cni.HandleAt(path)
	if err != nil {
		return path, err
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return path, err
	}
	for _, name := range append([]string{bridgeName}, bridges...) {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := h.LinkAdd(br); err != nil {
			return path, fmt.Errorf("add bridge %s: %w", name, err)
		}
		if err := linkUp(h, name); err != nil {
			return path, err
		}
	}
	return path, nil
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// setupNodeNetns creates a node's namespace (or an external's, which is
// no router) and joins it to its segment's bridge: eth0 with the node's
// address in the node, its peer on the bridge in the lab namespace. In a
// lab with subnets, the default route goes to the lab's router.
func setupNodeNetns(labNs, name, port string, sg segment, ip netip.Addr, router bool) (string, error) {
	path, err := joinBridge(labNs, name, port, sg.bridge, netip.PrefixFrom(ip, sg.network.Bits()), router)
	if err != nil || !sg.router.IsValid() {
		return path, err
	}
	h, err := cni.HandleAt(path)
	if err != nil {
		return path, err
	}
	defer h.Close()
	if err := h.RouteReplace(&netlink.Route{Gw: sg.router.AsSlice()}); err != nil {
		return path, fmt.Errorf("default route via the router %s in %s: %w", sg.router, name, err)
	}
	return path, nil
}

// setupRouter creates the router of a lab with subnets: a namespace that
// forwards, with eth<i> on the bridge of every segment holding the
// router's address there. It knows the segments' networks only, no pod
// CIDR: traffic to a pod crosses it only in a tunnel.
func setupRouter(labNs, lab string, segs []segment) (string, error) {
	var path string
	for i, sg := range segs {
		name := routerNetnsName(lab)
		var err error
		if i == 0 {
			path, err = joinBridge(labNs, name, routerPortName(sg.subnet), sg.bridge, netip.PrefixFrom(sg.router, sg.network.Bits()), true)
		} else {
			err = addBridgeLink(labNs, path, name, routerPortName(sg.subnet), sg.bridge, fmt.Sprintf("eth%d", i), netip.PrefixFrom(sg.router, sg.network.Bits()))
		}
		if err != nil {
			return path, err
		}
	}
	return path, nil
}

// joinBridge creates a namespace and joins it to bridge (see
// setupNodeNetns).
func joinBridge(labNs, name, port, bridge string, addr netip.Prefix, router bool) (string, error) {
	path, err := createNetns(name)
	if err != nil {
		return "", err
	}
	if err := setSysctls(path, hostSysctls, true); err != nil {
		return path, err
	}
	if router {
		if err := setSysctls(path, routerSysctls, false); err != nil {
			return path, err
		}
	}
	nh, err := cni.HandleAt(path)
	if err != nil {
		return path, err
	}
	defer nh.Close()
	if err := linkUp(nh, "lo"); err != nil {
		return path, err
	}
	return path, addBridgeLink(labNs, path, name, port, bridge, ifaceName, addr)
}

// addBridgeLink joins the namespace at path (called name) to bridge: a
// veth, port on the bridge in the lab namespace, dev with addr in the
// namespace, both up.
func addBridgeLink(labNs, path, name, port, bridge, dev string, addr netip.Prefix) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer func() { _ = ns.Close() }()
	lh, err := cni.HandleAt(labNs)
	if err != nil {
		return err
	}
	defer lh.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port},
		PeerName:      dev,
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := lh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s to %s: %w", port, name, err)
	}
	br, err := lh.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	l, err := lh.LinkByName(port)
	if err != nil {
		return fmt.Errorf("link %s: %w", port, err)
	}
	if err := lh.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("attach %s to bridge %s: %w", port, bridge, err)
	}
	if err := lh.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", port, err)
	}
	nh, err := cni.HandleAt(path)
	if err != nil {
		return err
	}
	defer nh.Close()
	eth, err := nh.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("link %s in %s: %w", dev, name, err)
	}
	if err := nh.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, name, err)
	}
	if err := nh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set %s up in %s: %w", dev, name, err)
	}
	return nil
}

// routeExternal gives an external host a route to a node's pod CIDR via
// the node. The agents route between nodes; the world outside the
// cluster is not theirs to program. The datapath does not masquerade, so
// an external answers a pod at the pod's own address, and needs to know
// where that is: only via a node on its own network (the router knows no
// pod CIDR), so pods on nodes of other subnets do not reach externals.
func routeExternal(extNs string, podCIDR netip.Prefix, via netip.Addr) error {
	h, err := cni.HandleAt(extNs)
	if err != nil {
		return err
	}
	defer h.Close()
	r := &netlink.Route{Dst: ipNet(podCIDR), Gw: via.AsSlice()}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s via %s in %s: %w", podCIDR, via, extNs, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
