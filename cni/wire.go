package cni

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
)

// The pod's wiring, as Calico and Cilium do it: a veth pair whose host
// side has no address, the pod's address as a host route (/32, /128) on
// its side, the gateway on-link with a permanent neighbour entry carrying
// the host side's MAC (the pod never needs an ARP or NDP answer), and on
// the host a route to the pod's address through the veth with a permanent
// neighbour entry for the pod's MAC. The functions below are what the CNI
// plugin and the lab both call.
//
// A namespace is named by the path of its file (/var/run/netns/cni-...,
// /proc/<pid>/ns/net); the host's is the empty string: the caller's own
// network namespace.

// HostVethPrefix starts the name of every host side that HostVethName
// names.
const HostVethPrefix = "mp"

// aliasPrefix starts the alias (IFLA_IFALIAS) that CreateVeth gives the
// host side when asked: GC finds the veths of attachments the runtime no
// longer lists by it.
const aliasPrefix = "meshplane:"

// HostVethName is the host side's name for the attachment of containerID
// on ifname: "mp" and 13 hex characters of a hash, so it fits IFNAMSIZ
// (15) and the same attachment always gets the same name.
func HostVethName(containerID, ifname string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifname))
	return HostVethPrefix + hex.EncodeToString(h[:])[:13]
}

// attachmentAlias is the host side's alias for an attachment.
func attachmentAlias(containerID, ifname string) string {
	return aliasPrefix + containerID + "/" + ifname
}

// parseAlias returns the attachment an alias names.
func parseAlias(alias string) (containerID, ifname string, ok bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return "", "", false
	}
	containerID, ifname, ok = strings.Cut(rest, "/")
	return containerID, ifname, ok && containerID != "" && ifname != ""
}

// VethSpec is a pod's veth pair to create.
type VethSpec struct {
	// HostNetns is the namespace of the host side ("": the caller's).
	HostNetns string
	// HostName is the host side's name (HostVethName for the plugin).
	HostName string
	// PodNetns is the pod's namespace file.
	PodNetns string
	// PodIfName is the pod side's name (CNI_IFNAME, usually eth0).
	PodIfName string
	// MTU of both sides; 0 leaves the kernel's default.
	MTU int
	// ContainerID, if set, is recorded with PodIfName in the host side's
	// alias ("meshplane:<container ID>/<ifname>"), so that a later GC can
	// tell which attachment a veth belongs to.
	ContainerID string
}

// Veth is a veth pair CreateVeth made: both sides up.
type Veth struct {
	HostName  string
	HostIndex int
	HostMAC   net.HardwareAddr
	PodIfName string
	PodIndex  int
	PodMAC    net.HardwareAddr
}

// ErrVethExists is wrapped when the host side's name is taken: an
// attachment with that name exists (a repeated ADD without a DEL).
var ErrVethExists = errors.New("veth exists")

// wiring is netlink handles in the host's and a pod's namespaces, for the
// steps of one attachment. The plugin opens them once for all of an ADD's
// steps: each handle in another namespace costs a switch of a thread into
// it and back. A side a step does not use may be nil.
type wiring struct {
	host, pod *netlink.Handle
}

func (w wiring) close() {
	if w.host != nil {
		w.host.Close()
	}
	if w.pod != nil {
		w.pod.Close()
	}
}

// openWiring opens handles in the host's namespace ("": the caller's) and
// the pod's, at their paths.
func openWiring(hostNetns, podNetns string) (wiring, error) {
	hh, err := HandleAt(hostNetns)
	if err != nil {
		return wiring{}, err
	}
	ph, err := HandleAt(podNetns)
	if err != nil {
		hh.Close()
		return wiring{}, err
	}
	return wiring{host: hh, pod: ph}, nil
}

// CreateVeth creates the pod's veth pair and brings up both sides and
// the pod's loopback. On failure it removes what it created (never an
// interface that was there before).
func CreateVeth(s VethSpec) (Veth, error) {
	w, err := openWiring(s.HostNetns, s.PodNetns)
	if err != nil {
		return Veth{}, err
	}
	defer w.close()
	return w.createVeth(s)
}

func (w wiring) createVeth(s VethSpec) (_ Veth, err error) {
	if s.HostName == "" || len(s.HostName) > unix.IFNAMSIZ-1 || s.PodIfName == "" || len(s.PodIfName) > unix.IFNAMSIZ-1 {
		return Veth{}, fmt.Errorf("veth %q/%q: interface names must be 1-15 characters", s.HostName, s.PodIfName)
	}
	pns, err := netns.GetFromPath(s.PodNetns)
	if err != nil {
		return Veth{}, fmt.Errorf("open the pod's netns %s: %w", s.PodNetns, err)
	}
	defer func() { _ = pns.Close() }()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.HostName, MTU: s.MTU}, PeerName: s.PodIfName, PeerNamespace: netlink.NsFd(pns)}
	if err := w.host.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return Veth{}, fmt.Errorf("add veth %s: %w (%w)", s.HostName, ErrVethExists, err)
		}
		return Veth{}, fmt.Errorf("add veth %s (pod side %s in %s): %w", s.HostName, s.PodIfName, s.PodNetns, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, remove(w.host, s.HostName))
		}
	}()
	host, err := w.host.LinkByName(s.HostName)
	if err != nil {
		return Veth{}, fmt.Errorf("link %s: %w", s.HostName, err)
	}
	// (LinkAdd of a veth does not send the alias: it is set here.)
	if s.ContainerID != "" {
		if err := w.host.LinkSetAlias(host, attachmentAlias(s.ContainerID, s.PodIfName)); err != nil {
			return Veth{}, fmt.Errorf("alias of %s: %w", s.HostName, err)
		}
	}
	if err := w.host.LinkSetUp(host); err != nil {
		return Veth{}, fmt.Errorf("set %s up: %w", s.HostName, err)
	}
	out := Veth{HostName: s.HostName, HostIndex: host.Attrs().Index, HostMAC: host.Attrs().HardwareAddr, PodIfName: s.PodIfName}
	if err := linkUp(w.pod, "lo"); err != nil {
		return Veth{}, err
	}
	pod, err := w.pod.LinkByName(s.PodIfName)
	if err != nil {
		return Veth{}, fmt.Errorf("pod link %s: %w", s.PodIfName, err)
	}
	if err := w.pod.LinkSetUp(pod); err != nil {
		return Veth{}, fmt.Errorf("set pod %s up: %w", s.PodIfName, err)
	}
	out.PodIndex, out.PodMAC = pod.Attrs().Index, pod.Attrs().HardwareAddr
	return out, nil
}

// SetMTU sets the MTU of both sides of a pod's veth.
func SetMTU(hostNetns, podNetns string, v Veth, mtu int) error {
	w, err := openWiring(hostNetns, podNetns)
	if err != nil {
		return err
	}
	defer w.close()
	return w.setMTU(v, mtu)
}

func (w wiring) setMTU(v Veth, mtu int) error {
	for _, l := range []struct {
		h     *netlink.Handle
		name  string
		index int
	}{{w.pod, v.PodIfName, v.PodIndex}, {w.host, v.HostName, v.HostIndex}} {
		if err := l.h.LinkSetMTU(byIndex(l.index), mtu); err != nil {
			return fmt.Errorf("MTU %d on %s: %w", mtu, l.name, err)
		}
	}
	return nil
}

// byIndex is a link for the netlink calls that need only its index.
func byIndex(index int) netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}
}

// PodIP is one of a pod's addresses and its gateway (of the same family).
type PodIP struct {
	IP      netip.Addr
	Gateway netip.Addr
}

// hostBits is the prefix length of a host route to ip: 32 or 128.
func hostBits(ip netip.Addr) int { return ip.BitLen() }

func family(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// ConfigurePod gives the pod its addresses and routes on ifname: for each
// PodIP, ip/32 (or /128, without duplicate address detection), its gateway
// on-link, the default route of its family through it, and a permanent
// neighbour entry for the gateway with the host side's MAC. With an IPv6
// address, the interface takes no router advertisements.
func ConfigurePod(podNetns, ifname string, ips []PodIP, hostMAC net.HardwareAddr) error {
	h, err := HandleAt(podNetns)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("pod link %s: %w", ifname, err)
	}
	return wiring{pod: h}.configurePod(podNetns, ifname, link.Attrs().Index, ips, hostMAC)
}

func (w wiring) configurePod(podNetns, ifname string, idx int, ips []PodIP, hostMAC net.HardwareAddr) error {
	for _, p := range ips {
		if !p.IP.IsValid() || !p.Gateway.IsValid() || p.IP.Is4() != p.Gateway.Is4() {
			return fmt.Errorf("pod address %s with gateway %s: need an address and a gateway of the same family", p.IP, p.Gateway)
		}
	}
	if hasIPv6(ips) {
		if err := ipv6Sysctls(podNetns, ifname); err != nil {
			return err
		}
	}
	link := byIndex(idx)
	for _, p := range ips {
		addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(p.IP, hostBits(p.IP)))}
		if p.IP.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := w.pod.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("pod address %s: %w", p.IP, err)
		}
		gw := ipNet(netip.PrefixFrom(p.Gateway, hostBits(p.Gateway)))
		if err := w.pod.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: gw, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("pod route to gateway %s: %w", p.Gateway, err)
		}
		if err := w.pod.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: defaultRoute(p.IP), Gw: p.Gateway.AsSlice()}); err != nil {
			return fmt.Errorf("pod default route via %s: %w", p.Gateway, err)
		}
		if err := permanentNeigh(w.pod, idx, p.Gateway, hostMAC); err != nil {
			return err
		}
	}
	return nil
}

// RouteToPod makes the host deliver the pod's addresses to the host side
// of its veth, with a permanent neighbour entry for the pod's MAC.
func RouteToPod(hostNetns, hostVeth string, ips []netip.Addr, podMAC net.HardwareAddr) error {
	h, err := HandleAt(hostNetns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("link %s: %w", hostVeth, err)
	}
	return wiring{host: h}.routeToPod(hostNetns, hostVeth, l.Attrs().Index, ips, podMAC)
}

func (w wiring) routeToPod(hostNetns, hostVeth string, idx int, ips []netip.Addr, podMAC net.HardwareAddr) error {
	for _, ip := range ips {
		if ip.Is6() {
			if err := ipv6Sysctls(hostNetns, hostVeth); err != nil {
				return err
			}
			break
		}
	}
	for _, ip := range ips {
		if err := w.host.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: ipNet(netip.PrefixFrom(ip, hostBits(ip))), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route %s dev %s: %w", ip, hostVeth, err)
		}
		if err := permanentNeigh(w.host, idx, ip, podMAC); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes the host side of a pod's veth, and with it the pod side
// and every route and neighbour entry through it. A missing interface, or
// a missing namespace, is not an error: DEL may be repeated.
func Remove(hostNetns, hostVeth string) error {
	h, err := HandleAt(hostNetns)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer h.Close()
	return remove(h, hostVeth)
}

func remove(h *netlink.Handle, hostVeth string) error {
	l, err := h.LinkByName(hostVeth)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("link %s: %w", hostVeth, err)
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", hostVeth, err)
	}
	return nil
}

// attachedVeth is a host side that CreateVeth made with a container ID.
type attachedVeth struct {
	name, containerID, ifname string
}

// attachedVeths lists the host sides in hostNetns whose alias names an
// attachment.
func attachedVeths(hostNetns string) ([]attachedVeth, error) {
	h, err := HandleAt(hostNetns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []attachedVeth
	for _, l := range links {
		a := l.Attrs()
		if _, ok := l.(*netlink.Veth); !ok || !strings.HasPrefix(a.Name, HostVethPrefix) {
			continue
		}
		if cid, ifname, ok := parseAlias(a.Alias); ok {
			out = append(out, attachedVeth{name: a.Name, containerID: cid, ifname: ifname})
		}
	}
	return out, nil
}

func hasIPv6(ips []PodIP) bool {
	for _, p := range ips {
		if p.IP.Is6() {
			return true
		}
	}
	return false
}

// ipv6Sysctls enable IPv6 on ifname (a namespace may have it off by
// default) and stop it from taking router advertisements: its routes are
// the ones given here.
func ipv6Sysctls(nsPath, ifname string) error {
	return InNetns(nsPath, func() error {
		for _, kv := range [][2]string{{"disable_ipv6", "0"}, {"accept_ra", "0"}, {"accept_dad", "0"}} {
			p := filepath.Join("/proc/sys/net/ipv6/conf", ifname, kv[0])
			if err := os.WriteFile(p, []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl net.ipv6.conf.%s.%s=%s: %w", ifname, kv[0], kv[1], err)
			}
		}
		return nil
	})
}

func defaultRoute(ip netip.Addr) *net.IPNet {
	if ip.Is4() {
		return ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0))
	}
	return ipNet(netip.PrefixFrom(netip.IPv6Unspecified(), 0))
}

func permanentNeigh(h *netlink.Handle, idx int, ip netip.Addr, mac net.HardwareAddr) error {
	n := &netlink.Neigh{LinkIndex: idx, Family: family(ip), State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}
	if err := h.NeighSet(n); err != nil {
		return fmt.Errorf("neighbour %s lladdr %s: %w", ip, mac, err)
	}
	return nil
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

// HandleAt returns a netlink handle (rtnetlink only: links, addresses,
// routes, neighbours) whose socket lives in the namespace at path ("": the
// caller's).
//
// The socket is made on a thread of its own that enters the namespace and
// is then retired (InNetns), not by netlink.NewHandleAt, which switches a
// thread back afterwards and so first opens /proc/<pid>/task/<tid>/ns/net:
// every /proc entry a short-lived process opens of itself costs whoever
// reaps it (the container runtime, for the plugin) a walk of that
// directory's dentries when it exits, measured at 0.6 ms a process here.
func HandleAt(path string) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := InNetns(path, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		if path == "" {
			return nil, fmt.Errorf("netlink: %w", err)
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	return h, nil
}

// InNetns runs fn on an OS thread in the namespace at path ("": the
// caller's, on the calling goroutine). The thread is never handed back to
// the scheduler (the goroutine ends locked, so the runtime retires it):
// no other goroutine can run in the wrong namespace.
func InNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		_ = unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
