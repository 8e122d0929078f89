package bpf_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/bpf/bpftest"
	"github.com/meshplane/meshplane/netnstest"
)

// The timeouts of exchanges: short, since a dropped SYN is waited out in
// full, and generous enough for an exchange over veths on a busy machine.
const (
	deniedTimeout  = 400 * time.Millisecond // how long a dropped exchange waits
	allowedTimeout = 5 * time.Second        // how long an allowed one may take
	flowTimeout    = 5 * time.Second        // how long to wait for a flow event
)

// gateway is every pod's default gateway: a link-local address whose
// neighbor entry points at the host side of the pod's veth.
var gateway = netip.MustParseAddr("169.254.1.1")

var nodeSeq atomic.Int64

// testNode is a node: a network namespace with forwarding on, its own
// pinned maps and a loaded datapath, and a reader of its flow events.
type testNode struct {
	t     testing.TB
	ns    *netnstest.NS
	cfg   bpf.Config
	maps  *bpf.Maps
	dp    *bpf.Datapath
	flows *flowLog
	podN  int

	backendIDs map[netip.AddrPort]uint32 // IDs of the backends in the Backends map
}

func newNode(t testing.TB) *testNode {
	t.Helper()
	return newNodeMode(t, "")
}

// newNodeMode is newNode with the datapath attaching in mode.
func newNodeMode(t testing.TB, mode bpf.AttachMode) *testNode {
	t.Helper()
	bpftest.Require(t)
	netnstest.Require(t)
	n := &testNode{t: t, ns: netnstest.New(t), backendIDs: make(map[netip.AddrPort]uint32)}
	n.ns.Sysctl(t, "net.ipv4.ip_forward", "1")
	// Before any interface exists, so that each inherits the defaults.
	n.ns.Sysctl(t, "net.ipv4.conf.all.rp_filter", "0")
	n.ns.Sysctl(t, "net.ipv4.conf.default.rp_filter", "0")
	n.ns.Sysctl(t, "net.ipv4.conf.all.send_redirects", "0")
	n.ns.Sysctl(t, "net.ipv4.conf.default.send_redirects", "0")

	n.cfg = bpf.Config{
		Node:          fmt.Sprintf("dptest-%d-%d", os.Getpid(), nodeSeq.Add(1)),
		IPCacheMax:    1024,
		EndpointsMax:  1024,
		PolicyMax:     1024,
		ServicesMax:   1024,
		BackendsMax:   1024,
		CIDRMax:       1024,
		CTMax:         4096,
		FlowRingBytes: 1 << 16,
		Attach:        mode,
	}
	t.Cleanup(func() {
		if err := bpf.RemovePins(n.cfg); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	var err error
	if n.maps, err = bpf.OpenMaps(n.cfg); err != nil {
		t.Fatalf("OpenMaps: %v", err)
	}
	t.Cleanup(func() { _ = n.maps.Close() })
	n.load()
	return n
}

// load loads a datapath on the node's pins, with a flow reader; both are
// closed when the test ends.
func (n *testNode) load() {
	t := n.t
	t.Helper()
	dp, err := bpf.LoadDatapath(n.cfg, n.maps)
	if err != nil {
		t.Fatalf("LoadDatapath: %+v", err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("close datapath: %v", err)
		}
	})
	n.dp = dp
	if n.flows == nil {
		n.flows = startFlowLog(t, dp)
	}
}

// attach attaches the datapath to ifindex, from a thread in the node's
// namespace.
func (n *testNode) attach(ifindex int) {
	n.t.Helper()
	if err := n.ns.Do(func() error { return n.dp.Attach(ifindex) }); err != nil {
		n.t.Fatalf("Attach: %v", err)
	}
}

// testPod is a pod: a namespace joined to its node by a veth pair, with
// its endpoint in the node's maps and the datapath on its host veth.
type testPod struct {
	name     string
	node     *testNode
	ns       *netnstest.NS
	ip       netip.Addr
	host     netnstest.Link // in the node
	eth0     netnstest.Link // in the pod
	epID     uint32
	identity uint32
}

// addPod creates a pod with ip and identity as the CNI plugin and the
// agent would: eth0 with ip/32, a default route via the gateway, whose
// neighbor entry is the host veth's MAC; on the node a /32 route and a
// neighbor entry for the pod, its endpoint and ipcache entries, and the
// datapath attached.
func (n *testNode) addPod(name, ip string, identity uint32) *testPod {
	t := n.t
	t.Helper()
	n.podN++
	p := &testPod{name: name, node: n, ns: netnstest.New(t), ip: netip.MustParseAddr(ip), epID: uint32(100 + n.podN), identity: identity}
	p.host, p.eth0 = netnstest.Veth(t, n.ns, fmt.Sprintf("lxc%d", n.podN), p.ns, "eth0")
	p.ns.AddAddr(t, "eth0", netip.PrefixFrom(p.ip, 32))
	p.ns.AddRoute(t, netip.PrefixFrom(gateway, 32), "eth0", netip.Addr{})
	p.ns.AddRoute(t, netip.MustParsePrefix("0.0.0.0/0"), "eth0", gateway)
	p.ns.AddNeigh(t, "eth0", gateway, p.host.MAC)
	n.ns.AddRoute(t, netip.PrefixFrom(p.ip, 32), p.host.Name, netip.Addr{})
	n.ns.AddNeigh(t, p.host.Name, p.ip, p.eth0.MAC)

	p.setFlags(0)
	n.putIPCache(p.ip, identity, netip.Addr{}, bpf.IPCacheLocal)
	n.attach(p.host.Index)
	return p
}

// setFlags rewrites the pod's endpoint entry with flags (policy
// enforcement).
func (p *testPod) setFlags(flags bpf.EndpointFlags) {
	t := p.node.t
	t.Helper()
	v := bpf.EndpointValue{EndpointID: p.epID, IfIndex: uint32(p.host.Index), Identity: p.identity, Flags: flags}
	v.PodMAC, _ = bpf.MAC(p.eth0.MAC)
	v.NodeMAC, _ = bpf.MAC(p.host.MAC)
	if err := p.node.maps.Endpoints.Put(bpf.EndpointKeyFor(p.ip), v); err != nil {
		t.Fatalf("put endpoint: %v", err)
	}
}

func (n *testNode) putIPCache(ip netip.Addr, identity uint32, node netip.Addr, flags bpf.IPCacheFlags) {
	n.t.Helper()
	err := n.maps.IPCache.Put(bpf.IPCacheKeyFor(netip.PrefixFrom(ip, 32)), bpf.IPCacheValueFor(identity, node, flags))
	if err != nil {
		n.t.Fatalf("put ipcache: %v", err)
	}
}

// policy writes a policy entry of the pod: verdict for traffic in dir
// with remote (0: any), proto (ProtoAny: any) and port (0: any port).
func (p *testPod) policy(dir bpf.Direction, remote uint32, proto uint8, port uint16, verdict bpf.Verdict) {
	t := p.node.t
	t.Helper()
	k := p.policyKey(dir, remote, proto, port)
	if err := p.node.maps.Policy.Put(k, bpf.PolicyValue{Verdict: verdict}); err != nil {
		t.Fatalf("put policy %v: %v", k, err)
	}
}

func (p *testPod) deletePolicy(dir bpf.Direction, remote uint32, proto uint8, port uint16) {
	t := p.node.t
	t.Helper()
	k := p.policyKey(dir, remote, proto, port)
	if ok, err := p.node.maps.Policy.Delete(k); !ok || err != nil {
		t.Fatalf("delete policy %v: %v, %v", k, ok, err)
	}
}

func (p *testPod) policyKey(dir bpf.Direction, remote uint32, proto uint8, port uint16) bpf.PolicyKey {
	bits := 16
	if port == 0 {
		bits = 0
	}
	k, err := bpf.PolicyKeyFor(p.epID, dir, remote, proto, port, bits)
	if err != nil {
		p.node.t.Fatal(err)
	}
	return k
}

// serveTCP answers each line on port with "<pod> <line>" until the test
// ends.
func (p *testPod) serveTCP(port uint16) {
	t := p.node.t
	l := p.ns.Listen(t, "tcp4", netip.AddrPortFrom(p.ip, port).String())
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]bool)
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "%s %s", p.name, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// serveUDP answers each datagram on port with "<pod> <datagram>".
func (p *testPod) serveUDP(port uint16) {
	t := p.node.t
	c := p.ns.ListenPacket(t, "udp4", netip.AddrPortFrom(p.ip, port).String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteTo(append([]byte(p.name+" "), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() {
		_ = c.Close()
		<-done
	})
}

// conn is a TCP connection from a pod.
type conn struct {
	c net.Conn
	r *bufio.Reader
}

// dialTCP connects from the pod (from local, if valid, else its own IP)
// to addr within timeout.
func (p *testPod) dialTCP(addr string, local netip.Addr, timeout time.Duration) (*conn, error) {
	d := net.Dialer{Timeout: timeout}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: net.IP(local.AsSlice())}
	}
	c, err := p.ns.Dial(context.Background(), d, "tcp4", addr)
	if err != nil {
		return nil, err
	}
	return &conn{c: c, r: bufio.NewReader(c)}, nil
}

// exchange sends a line and returns the answer, without the line: the
// name of the pod that answered.
func (c *conn) exchange(timeout time.Duration) (string, error) {
	if err := c.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	if _, err := c.c.Write([]byte("hello\n")); err != nil {
		return "", err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	name, ok := strings.CutSuffix(line, " hello\n")
	if !ok {
		return "", fmt.Errorf("unexpected answer %q", line)
	}
	return name, nil
}

func (c *conn) Close() error { return c.c.Close() }

// tcp connects from the pod to addr, exchanges a line and closes: it
// returns the name of the pod that answered.
func (p *testPod) tcp(addr string, timeout time.Duration) (string, error) {
	c, err := p.dialTCP(addr, netip.Addr{}, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.exchange(timeout)
}

// udp sends a datagram from the pod to addr on a connected socket (which
// takes answers from addr only) and returns the name of the pod that
// answered.
func (p *testPod) udp(addr string, timeout time.Duration) (string, error) {
	c, err := p.ns.Dial(context.Background(), net.Dialer{}, "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		return "", err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	name, ok := strings.CutSuffix(string(buf[:n]), " hello")
	if !ok {
		return "", fmt.Errorf("unexpected answer %q", buf[:n])
	}
	return name, nil
}

// ping sends an ICMP echo request from the pod to dst and waits for the
// reply.
func (p *testPod) ping(dst netip.Addr, timeout time.Duration) error {
	var c net.PacketConn
	err := p.ns.Do(func() error {
		var err error
		c, err = net.ListenPacket("ip4:icmp", p.ip.String())
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	// A new identifier each time: pings with the same one are packets of
	// one tracked flow.
	id := uint16(pingSeq.Add(1))
	msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'm', 'p'}
	sum := icmpChecksum(msg)
	msg[2], msg[3] = byte(sum>>8), byte(sum)
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: net.IP(dst.AsSlice())}); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		// The raw socket sees every ICMP message; the echo reply from dst
		// with our identifier is the one.
		if n >= 8 && buf[0] == 0 && buf[4] == byte(id>>8) && buf[5] == byte(id) && from.String() == dst.String() {
			return nil
		}
	}
}

var pingSeq atomic.Uint32

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// flowLog collects a datapath's flow events.
type flowLog struct {
	mu      sync.Mutex
	flows   []bpf.Flow
	changed chan struct{} // closed and replaced on every new flow
}

func startFlowLog(t testing.TB, dp *bpf.Datapath) *flowLog {
	r, err := dp.Flows()
	if err != nil {
		t.Fatalf("Flows: %v", err)
	}
	fl := &flowLog{changed: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			f, err := r.Read()
			if errors.Is(err, os.ErrClosed) {
				return
			}
			if err != nil {
				t.Errorf("read flow: %v", err)
				return
			}
			fl.mu.Lock()
			fl.flows = append(fl.flows, f)
			close(fl.changed)
			fl.changed = make(chan struct{})
			fl.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close flow reader: %v", err)
		}
		<-done
	})
	return fl
}

// wait returns the first flow that match accepts, waiting up to
// flowTimeout for it; it fails the test if none comes.
func (fl *flowLog) wait(t *testing.T, what string, match func(bpf.Flow) bool) bpf.Flow {
	t.Helper()
	deadline := time.NewTimer(flowTimeout)
	defer deadline.Stop()
	for {
		fl.mu.Lock()
		for _, f := range fl.flows {
			if match(f) {
				fl.mu.Unlock()
				return f
			}
		}
		changed := fl.changed
		n := len(fl.flows)
		fl.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no flow event %s within %v among %d: %s", what, flowTimeout, n, fl.dump())
			return bpf.Flow{}
		}
	}
}

func (fl *flowLog) dump() string {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	var b strings.Builder
	for _, f := range fl.flows {
		fmt.Fprintf(&b, "\n\t%s %s %s %d %s -> %s ids %d->%d ep %d if %d svc %s", f.Verdict, f.Reason, f.Direction,
			f.Proto, f.Src, f.Dst, f.SrcIdentity, f.DstIdentity, f.EndpointID, f.IfIndex, f.Service)
	}
	return b.String()
}
