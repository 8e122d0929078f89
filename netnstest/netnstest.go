package netnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/internal/netnsfile"
)

// nsDir is where named network namespaces are bind-mounted, as
// `ip netns` does.
const nsDir = "/run/netns"

// seq numbers the namespaces of this process.
var seq atomic.Int64

// Require skips the test unless this process may create network
// namespaces (root, or CAP_SYS_ADMIN and CAP_NET_ADMIN). With
// MESHPLANE_REQUIRE_NETNS set, as in CI, it fails instead, so that the
// tests cannot silently not run.
func Require(tb testing.TB) {
	tb.Helper()
	if err := probeOnce(); err != nil {
		if os.Getenv("MESHPLANE_REQUIRE_NETNS") != "" {
			tb.Fatalf("MESHPLANE_REQUIRE_NETNS is set, but network namespaces cannot be created: %v", err)
		}
		tb.Skipf("needs to create network namespaces (root, or CAP_SYS_ADMIN and CAP_NET_ADMIN): %v", err)
	}
}

// probeOnce is probe, run once per process.
var probeOnce = sync.OnceValue(probe)

// probe creates a network namespace on a thread of its own, which dies
// with it.
func probe() error {
	return onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		return nil
	})
}

// onThread runs fn on a locked OS thread that exits afterwards, so that
// whatever fn does to the thread (its network namespace) never reaches
// another goroutine.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the runtime ends a goroutine's locked thread
		// with it instead of returning it to the pool.
		errc <- fn()
	}()
	return <-errc
}

// NS is a named network namespace that lives as long as the test that
// created it. Its name starts with "mpt-<pid>-", so tests running in
// parallel, in this process or another, never collide.
type NS struct {
	name   string
	handle netns.NsHandle
	nl     *netlink.Handle
}

// New creates a network namespace, with its loopback up, and registers
// its deletion with tb.Cleanup. Things registered for cleanup after New
// (listeners, say) are cleaned up before the namespace goes.
func New(tb testing.TB) *NS {
	tb.Helper()
	Require(tb)
	name := fmt.Sprintf("mpt-%d-%d", os.Getpid(), seq.Add(1))
	ns := &NS{name: name, handle: netns.None()}
	err := onThread(func() error {
		h, err := netns.NewNamed(name)
		if err != nil {
			return err
		}
		ns.handle = h
		return nil
	})
	if err != nil {
		tb.Fatalf("create network namespace %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if ns.nl != nil {
			ns.nl.Close()
		}
		if err := errors.Join(ns.handle.Close(), netnsfile.Delete(filepath.Join(nsDir, name))); err != nil {
			tb.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	if ns.nl, err = netlink.NewHandleAt(ns.handle); err != nil {
		tb.Fatalf("netlink in %s: %v", name, err)
	}
	lo, err := ns.nl.LinkByName("lo")
	if err == nil {
		err = ns.nl.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("%s: set lo up: %v", name, err)
	}
	return ns
}

// Name returns the namespace's name, as `ip netns` lists it.
func (ns *NS) Name() string { return ns.name }

// Path returns the namespace's bind mount, /run/netns/<name>.
func (ns *NS) Path() string { return filepath.Join(nsDir, ns.name) }

// Netlink returns a netlink handle that works in the namespace, for what
// the helpers here do not cover. It is closed with the namespace.
func (ns *NS) Netlink() *netlink.Handle { return ns.nl }

// Do runs fn on an OS thread in the namespace and returns its error. The
// thread exits afterwards. Sockets that fn creates stay in the namespace
// for their whole life, whichever goroutine uses them later, and processes
// it starts are in it.
func (ns *NS) Do(fn func() error) error {
	return onThread(func() error {
		if err := netns.Set(ns.handle); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", ns.name, err)
		}
		return fn()
	})
}

// Exec runs a command in the namespace and returns its combined output.
func (ns *NS) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out []byte
	err := ns.Do(func() error {
		var err error
		out, err = exec.CommandContext(ctx, name, args...).CombinedOutput()
		return err
	})
	return out, err
}

// Sysctl sets a network sysctl of the namespace, e.g.
// ns.Sysctl(t, "net.ipv4.ip_forward", "1").
func (ns *NS) Sysctl(tb testing.TB, key, value string) {
	tb.Helper()
	if !strings.HasPrefix(key, "net.") {
		tb.Fatalf("sysctl %s: only net.* sysctls belong to a network namespace", key)
	}
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	// /proc/sys/net shows the namespace of the thread that opens it.
	err := ns.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		tb.Fatalf("%s: sysctl %s=%s: %v", ns.name, key, value, err)
	}
}

// Link is a network interface in a namespace.
type Link struct {
	NS    *NS
	Name  string
	Index int
	MAC   net.HardwareAddr
}

// Link returns the interface called name.
func (ns *NS) Link(tb testing.TB, name string) Link {
	tb.Helper()
	l, err := ns.nl.LinkByName(name)
	if err != nil {
		tb.Fatalf("%s: link %s: %v", ns.name, name, err)
	}
	a := l.Attrs()
	return Link{NS: ns, Name: a.Name, Index: a.Index, MAC: a.HardwareAddr}
}

// Veth creates a veth pair, aName in a and bName in b, and sets both ends
// up. The pair goes with either namespace.
func Veth(tb testing.TB, a *NS, aName string, b *NS, bName string) (Link, Link) {
	tb.Helper()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName, Namespace: netlink.NsFd(a.handle)},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.handle),
	}
	if err := a.nl.LinkAdd(v); err != nil {
		tb.Fatalf("veth %s/%s - %s/%s: %v", a.name, aName, b.name, bName, err)
	}
	for _, end := range []struct {
		ns   *NS
		name string
	}{{a, aName}, {b, bName}} {
		l, err := end.ns.nl.LinkByName(end.name)
		if err == nil {
			err = end.ns.nl.LinkSetUp(l)
		}
		if err != nil {
			tb.Fatalf("%s: set %s up: %v", end.ns.name, end.name, err)
		}
	}
	return a.Link(tb, aName), b.Link(tb, bName)
}

// AddAddr adds the address p (e.g. 10.0.0.1/32) to the interface dev.
// IPv6 addresses skip duplicate address detection, so they are usable at
// once.
func (ns *NS) AddAddr(tb testing.TB, dev string, p netip.Prefix) {
	tb.Helper()
	l, err := ns.nl.LinkByName(dev)
	if err == nil {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		err = ns.nl.AddrAdd(l, a)
	}
	if err != nil {
		tb.Fatalf("%s: add address %s to %s: %v", ns.name, p, dev, err)
	}
}

// AddRoute adds a route to dst through dev: via the gateway gw, or, if gw
// is the zero Addr, directly (scope link).
func (ns *NS) AddRoute(tb testing.TB, dst netip.Prefix, dev string, gw netip.Addr) {
	tb.Helper()
	l, err := ns.nl.LinkByName(dev)
	if err == nil {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(dst), Scope: netlink.SCOPE_LINK}
		if gw.IsValid() {
			r.Gw = net.IP(gw.AsSlice())
			r.Scope = netlink.SCOPE_UNIVERSE
		}
		err = ns.nl.RouteAdd(r)
	}
	if err != nil {
		tb.Fatalf("%s: add route %s dev %s via %v: %v", ns.name, dst, dev, gw, err)
	}
}

// AddNeigh adds a permanent neighbor entry: ip is at mac on dev.
func (ns *NS) AddNeigh(tb testing.TB, dev string, ip netip.Addr, mac net.HardwareAddr) {
	tb.Helper()
	l, err := ns.nl.LinkByName(dev)
	if err == nil {
		family := netlink.FAMILY_V4
		if ip.Is6() {
			family = netlink.FAMILY_V6
		}
		err = ns.nl.NeighAdd(&netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       family,
			State:        netlink.NUD_PERMANENT,
			IP:           net.IP(ip.AsSlice()),
			HardwareAddr: mac,
		})
	}
	if err != nil {
		tb.Fatalf("%s: add neighbor %s lladdr %s dev %s: %v", ns.name, ip, mac, dev, err)
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Listen listens on address in the namespace (net.Listen's network and
// address); the listener is closed when the test ends.
func (ns *NS) Listen(tb testing.TB, network, address string) net.Listener {
	tb.Helper()
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		tb.Fatalf("%s: listen %s %s: %v", ns.name, network, address, err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

// ListenPacket is Listen for net.ListenPacket.
func (ns *NS) ListenPacket(tb testing.TB, network, address string) net.PacketConn {
	tb.Helper()
	var c net.PacketConn
	err := ns.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, address)
		return err
	})
	if err != nil {
		tb.Fatalf("%s: listen %s %s: %v", ns.name, network, address, err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Dial connects to address from the namespace with d (its Timeout,
// LocalAddr, ...). The caller closes the connection.
func (ns *NS) Dial(ctx context.Context, d net.Dialer, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
