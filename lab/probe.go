package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/cni"
)

// ProbeSpec is one connection attempt from a pod.
type ProbeSpec struct {
	// From is the source: a pod (see Lab.Pod for the forms) or an
	// external as "ext:NAME" (or NAME, when no pod has that name).
	From string
	// To is the target: a pod, an external, an IP address, or a service as
	// "namespace/name" (in the source's cluster) or "cluster/namespace/name".
	// When names collide, prefix "pod:", "ext:" or "svc:".
	To string
	// Port is the target port (the service port for a service). Zero means
	// the target's only port of Proto.
	Port uint16
	// Proto is "tcp" or "udp". Empty means tcp.
	Proto string
	// Timeout bounds the whole attempt. Zero means 1s.
	Timeout time.Duration
}

// ProbeResult is what a probe found.
type ProbeResult struct {
	From   string         `json:"from"`
	To     string         `json:"to"`
	Target netip.AddrPort `json:"target"`
	Proto  string         `json:"proto"`
	// Allowed: for TCP, the connection was made and the echo server
	// answered and echoed; for UDP, a reply came back.
	Allowed bool `json:"allowed"`
	// Answered is the echo server that answered: a Pod.Ref or an
	// External.Ref.
	Answered string `json:"answered,omitempty"`
	// Latency is from the connect (or the datagram sent) to the echo, for
	// an allowed probe.
	Latency time.Duration `json:"latency"`
	// Error is what the client saw when not allowed: a timeout, a reset,
	// a refused connection.
	Error string `json:"error,omitempty"`
	// Reason is, when not allowed, the drop reason of the dropped flow the
	// agents of the source and destination nodes recorded for the
	// connection ("policy denied"), or NoFlowRecorded.
	Reason string `json:"reason,omitempty"`
	// DropNode and DropDirection say where the flow was dropped.
	DropNode      string `json:"dropNode,omitempty"`
	DropDirection string `json:"dropDirection,omitempty"`
}

// NoFlowRecorded is ProbeResult.Reason when no agent recorded a drop of
// the probe's connection.
const NoFlowRecorded = "no flow recorded"

// flowWait is how long a probe that failed looks for its dropped flow:
// the datapath reports drops through a ring buffer, a moment later.
const flowWait = 500 * time.Millisecond

// Probe tries one connection from inside the source pod's namespace and
// reports whether it was allowed, who answered, and, if not, why. An
// error means the probe could not be made (an unknown pod, a bad port),
// not that it was denied.
func (l *Lab) Probe(ctx context.Context, spec ProbeSpec) (ProbeResult, error) {
	res := ProbeResult{From: spec.From, To: spec.To}
	proto := strings.ToLower(spec.Proto)
	switch proto {
	case "":
		proto = "tcp"
	case "tcp", "udp":
	default:
		return res, fmt.Errorf("probe: protocol %q: use tcp or udp", spec.Proto)
	}
	res.Proto = proto
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = time.Second
	}
	l.mu.Lock()
	src, err := l.st.findSource(spec.From)
	var (
		target netip.AddrPort
		nodes  []*nodeState
	)
	if err == nil {
		res.From = src.ref
		target, nodes, err = l.st.resolveTarget(src, spec.To, spec.Port, strings.ToUpper(proto))
	}
	l.mu.Unlock()
	if err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}
	res.Target = target
	var (
		start   time.Time
		latency time.Duration
		srcPort uint16
		answer  string
		perr    error
	)
	err = cni.InNetns(src.netns, func() error {
		// Timed here, on the pod's thread: entering the namespace is not
		// the network's latency.
		start = time.Now()
		if proto == "tcp" {
			answer, srcPort, perr = probeTCP(ctx, target, timeout)
		} else {
			answer, srcPort, perr = probeUDP(ctx, target, timeout)
		}
		latency = time.Since(start)
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("probe: %w", err)
	}
	if perr == nil {
		res.Allowed, res.Answered, res.Latency = true, answer, latency
		return res, nil
	}
	res.Error = perr.Error()
	res.Reason = NoFlowRecorded
	if len(nodes) == 0 {
		return res, nil // between externals: no agent saw it
	}
	if f, node, why := l.dropFlow(ctx, nodes, src.ip, srcPort, strings.ToUpper(proto), start); f != nil {
		res.Reason, res.DropNode, res.DropDirection = f.DropReason, node, f.Direction
	} else if why != "" {
		res.Reason = NoFlowRecorded + " (" + why + ")"
	}
	return res, nil
}

// probeSource is where a probe starts: a pod or an external.
type probeSource struct {
	ref   string // Pod.Ref or External.Ref
	ip    netip.Addr
	netns string
	// cluster and node are the pod's; empty for an external.
	cluster, node string
}

// findSource resolves a probe's From: "pod:REF", "ext:NAME", or a pod
// reference or an external's name, which must not name both.
func (s *state) findSource(from string) (probeSource, error) {
	kind, ref := splitKind(from)
	var (
		pod    *podState
		podErr error
	)
	if kind != "ext" && kind != "svc" {
		pod, podErr = s.findPod(ref)
	}
	x, xOK := (*externalState)(nil), false
	if kind != "pod" && kind != "svc" {
		x, xOK = s.findExternal(ref)
	}
	switch {
	case pod != nil && xOK:
		return probeSource{}, fmt.Errorf("source %q names a pod and an external: write pod:%s or ext:%s", from, ref, ref)
	case xOK:
		return probeSource{ref: x.Ref(), ip: x.IP, netns: x.Netns}, nil
	case pod != nil:
		return probeSource{ref: pod.Ref(), ip: pod.IP, netns: pod.Netns, cluster: pod.Cluster, node: pod.Node}, nil
	case kind == "svc":
		return probeSource{}, fmt.Errorf("source %q: a probe starts at a pod or an external, not a service", from)
	case podErr != nil && (kind == "pod" || !errors.Is(podErr, ErrNotFound)):
		return probeSource{}, podErr
	}
	return probeSource{}, fmt.Errorf("%w: source %q is no pod or external of lab %s", ErrNotFound, from, s.Name)
}

// splitKind splits "pod:", "svc:" or "ext:" off a probe's reference.
func splitKind(ref string) (kind, rest string) {
	if k, r, ok := strings.Cut(ref, ":"); ok && (k == "pod" || k == "svc" || k == "ext") {
		return k, r
	}
	return "", ref
}

// resolveTarget turns a probe's To into an address, and lists the nodes
// whose agents may have seen the connection: the source's (a pod's) and
// the target's (every backend's, for a service).
func (s *state) resolveTarget(src probeSource, to string, port uint16, proto string) (netip.AddrPort, []*nodeState, error) {
	var nodes []*nodeState
	addNode := func(cluster, name string) {
		if n, err := s.node(cluster, name); err == nil && !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	if src.node != "" {
		srcNode, err := s.node(src.cluster, src.node)
		if err != nil {
			return netip.AddrPort{}, nil, err
		}
		nodes = append(nodes, srcNode)
	}
	kind, ref := splitKind(to)
	if ip, err := netip.ParseAddr(ref); err == nil && kind == "" {
		if port == 0 {
			return netip.AddrPort{}, nil, fmt.Errorf("target %s: give a port", ip)
		}
		for _, p := range s.Pods {
			if p.IP == ip {
				addNode(p.Cluster, p.Node)
			}
		}
		return netip.AddrPortFrom(ip, port), nodes, nil
	}
	var pod *podState
	var podErr error
	if kind == "" || kind == "pod" {
		pod, podErr = s.findPod(ref)
	}
	svc, svcOK := Service{}, false
	if kind == "" || kind == "svc" {
		svc, svcOK = s.findService(ref, src.cluster)
	}
	x, xOK := (*externalState)(nil), false
	if kind == "" || kind == "ext" {
		x, xOK = s.findExternal(ref)
	}
	switch {
	case pod != nil && svcOK:
		return netip.AddrPort{}, nil, fmt.Errorf("target %q names a pod and a service: write pod:%s or svc:%s", to, ref, ref)
	case pod != nil && xOK:
		return netip.AddrPort{}, nil, fmt.Errorf("target %q names a pod and an external: write pod:%s or ext:%s", to, ref, ref)
	case xOK:
		if port == 0 {
			var ports []int
			for _, p := range x.Ports {
				if p.Protocol == proto {
					ports = append(ports, p.Port)
				}
			}
			if len(ports) != 1 {
				return netip.AddrPort{}, nil, fmt.Errorf("external %s has %d %s ports: give the port", x.Name, len(ports), proto)
			}
			port = uint16(ports[0])
		}
		return netip.AddrPortFrom(x.IP, port), nodes, nil
	case svcOK:
		if port == 0 {
			var ports []int
			for _, p := range svc.Ports {
				if p.Protocol == proto {
					ports = append(ports, p.Port)
				}
			}
			if len(ports) != 1 {
				return netip.AddrPort{}, nil, fmt.Errorf("service %s/%s has %d %s ports: give the port", svc.Namespace, svc.Name, len(ports), proto)
			}
			port = uint16(ports[0])
		}
		for _, b := range svc.Backends {
			if p, err := s.findPod(b); err == nil {
				addNode(p.Cluster, p.Node)
			}
		}
		return netip.AddrPortFrom(svc.ClusterIP, port), nodes, nil
	case pod != nil:
		if !pod.IP.IsValid() {
			return netip.AddrPort{}, nil, fmt.Errorf("pod %s has no address yet", pod.Ref())
		}
		if port == 0 {
			var ports []int
			for _, p := range pod.Ports {
				if p.Protocol == proto {
					ports = append(ports, p.Port)
				}
			}
			if len(ports) != 1 {
				return netip.AddrPort{}, nil, fmt.Errorf("pod %s has %d %s ports: give the port", pod.Ref(), len(ports), proto)
			}
			port = uint16(ports[0])
		}
		addNode(pod.Cluster, pod.Node)
		return netip.AddrPortFrom(pod.IP, port), nodes, nil
	case podErr != nil && !errors.Is(podErr, ErrNotFound):
		return netip.AddrPort{}, nil, podErr
	}
	return netip.AddrPort{}, nil, fmt.Errorf("%w: target %q is no pod, external, service or IP address of lab %s", ErrNotFound, to, s.Name)
}

// nonce is what a probe sends, to tell its answer from any other.
func nonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "probe " + hex.EncodeToString(b[:]) + "\n"
}

// probeTCP connects, reads the echo server's name line, and checks that
// the server echoes a nonce. It runs on a thread in the source pod's
// namespace (sockets keep the namespace they were made in). The source
// port is bound before connect, so it is known even when the connection
// never comes up.
func probeTCP(ctx context.Context, target netip.AddrPort, timeout time.Duration) (string, uint16, error) {
	var srcPort uint16
	deadline := time.Now().Add(timeout)
	d := net.Dialer{
		Deadline: deadline,
		Control: func(_, _ string, c syscall.RawConn) error {
			var berr error
			err := c.Control(func(fd uintptr) {
				if berr = unix.Bind(int(fd), &unix.SockaddrInet4{}); berr != nil {
					return
				}
				sa, err := unix.Getsockname(int(fd))
				if err != nil {
					berr = err
					return
				}
				if in4, ok := sa.(*unix.SockaddrInet4); ok {
					srcPort = uint16(in4.Port)
				}
			})
			return errors.Join(err, berr)
		},
	}
	conn, err := d.DialContext(ctx, "tcp4", target.String())
	if err != nil {
		return "", srcPort, simplify(err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(deadline)
	r := bufio.NewReader(conn)
	name, err := r.ReadString('\n')
	if err != nil {
		return "", srcPort, fmt.Errorf("connected, but no answer: %w", simplify(err))
	}
	n := nonce()
	if _, err := io.WriteString(conn, n); err != nil {
		return "", srcPort, fmt.Errorf("connected, but send failed: %w", simplify(err))
	}
	back := make([]byte, len(n))
	if _, err := io.ReadFull(r, back); err != nil {
		return "", srcPort, fmt.Errorf("connected, but no echo: %w", simplify(err))
	}
	if string(back) != n {
		return "", srcPort, fmt.Errorf("connected, but the echo was %q", back)
	}
	return strings.TrimSuffix(name, "\n"), srcPort, nil
}

// probeUDP sends a nonce and waits for "<name>\n<nonce>".
func probeUDP(ctx context.Context, target netip.AddrPort, timeout time.Duration) (string, uint16, error) {
	deadline := time.Now().Add(timeout)
	d := net.Dialer{Deadline: deadline}
	conn, err := d.DialContext(ctx, "udp4", target.String())
	if err != nil {
		return "", 0, simplify(err)
	}
	defer func() { _ = conn.Close() }()
	srcPort := uint16(0)
	if a, ok := conn.LocalAddr().(*net.UDPAddr); ok {
		srcPort = uint16(a.Port)
	}
	_ = conn.SetDeadline(deadline)
	n := nonce()
	if _, err := io.WriteString(conn, n); err != nil {
		return "", srcPort, simplify(err)
	}
	buf := make([]byte, 64<<10)
	for {
		k, err := conn.Read(buf)
		if err != nil {
			return "", srcPort, fmt.Errorf("no reply: %w", simplify(err))
		}
		name, payload, ok := strings.Cut(string(buf[:k]), "\n")
		if ok && payload == n {
			return name, srcPort, nil
		}
	}
}

// simplify drops the socket addresses Go's net errors repeat.
func simplify(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return errors.New("connection refused")
	case errors.Is(err, syscall.ECONNRESET):
		return errors.New("connection reset")
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return errors.New("unreachable")
	case errors.Is(err, io.EOF):
		return errors.New("closed by the other side")
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("timeout")
	}
	return err
}

// dropFlow looks in the flow logs of nodes' agents for a dropped packet of
// the probe's connection, for up to flowWait. Without one it says why in
// why, if there is more to say than that none was found.
func (l *Lab) dropFlow(ctx context.Context, nodes []*nodeState, src netip.Addr, srcPort uint16, proto string, since time.Time) (flow *api.Flow, node, why string) {
	ctx, cancel := context.WithTimeout(ctx, flowWait)
	defer cancel()
	for {
		unimplemented := 0
		for _, n := range nodes {
			f, err := findDrop(ctx, n, src, srcPort, proto, since)
			if f != nil {
				return f, n.Name, ""
			}
			if status.Code(err) == codes.Unimplemented {
				unimplemented++
			}
		}
		if unimplemented == len(nodes) {
			return nil, "", "the agents have no flow log (Observe is not implemented)"
		}
		select {
		case <-ctx.Done():
			return nil, "", ""
		case <-time.After(pollInterval):
		}
	}
}

func findDrop(ctx context.Context, n *nodeState, src netip.Addr, srcPort uint16, proto string, since time.Time) (*api.Flow, error) {
	client, closeFn, err := dialAgent(n.AgentSocket)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	stream, err := client.Observe(ctx, &api.ObserveRequest{Last: 4096, Verdict: "dropped", Ip: src.String()})
	if err != nil {
		return nil, err
	}
	var found *api.Flow
	for {
		f, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return found, nil
		}
		if err != nil {
			return found, err
		}
		if f.TimeUnixNano < since.Add(-time.Second).UnixNano() || !strings.EqualFold(f.Protocol, proto) {
			continue
		}
		// The source address and port (bound before the first packet, and
		// not reused within the window) name the probe's connection; the
		// destination may be a service's backend after translation.
		fwd := f.Source == src.String() && f.SourcePort == uint32(srcPort)
		rev := f.Destination == src.String() && f.DestinationPort == uint32(srcPort)
		if fwd || rev {
			found = f
		}
	}
}
