package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/api"
	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/labels"
)

// The datapath modes of Config.Datapath.
const (
	// DatapathEBPF loads the TC programs and attaches them to every local
	// endpoint's veth: policy, services and flows. The default.
	DatapathEBPF = "ebpf"
	// DatapathNone only fills the maps: nothing enforces or translates.
	// For comparisons (the iptables benchmark) and debugging.
	DatapathNone = "none"
)

// datapath is the loaded eBPF programs and where they are attached. With
// DatapathNone, dp is nil and every method does nothing.
//
// mu guards attached and errs; install and remove are called with the
// endpoint's owner lock held (pods in parallel), the status from anywhere.
type datapath struct {
	dp  *bpf.Datapath
	log *slog.Logger

	mu       sync.Mutex
	attached map[uint32]int // endpoint ID -> host veth ifindex
	errs     map[uint32]error
}

func (d *datapath) attach(ep *Endpoint) {
	if d.dp == nil || ep.IfIndex == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.dp.Attach(int(ep.IfIndex)); err != nil {
		// The pod stays without programs (its traffic is neither policed
		// nor translated): an operator must look. The status says so.
		d.errs[ep.ID] = err
		d.log.Error("cannot attach the datapath to a pod's veth", "endpoint", ep.owner(), "ifindex", ep.IfIndex, "err", err)
		return
	}
	delete(d.errs, ep.ID)
	d.attached[ep.ID] = int(ep.IfIndex)
}

func (d *datapath) detach(ep *Endpoint) {
	if d.dp == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.errs, ep.ID)
	ifindex, ok := d.attached[ep.ID]
	if !ok {
		return
	}
	delete(d.attached, ep.ID)
	if err := d.dp.Detach(ifindex); err != nil {
		d.log.Warn("cannot detach the datapath from a pod's veth", "endpoint", ep.owner(), "ifindex", ifindex, "err", err)
	}
}

// prune detaches the programs from veths no local endpoint has any more
// (pods deleted while the agent was down).
func (d *datapath) prune() {
	if d.dp == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	pinned, err := d.dp.Attached()
	if err != nil {
		d.log.Warn("cannot list the datapath's attachments", "err", err)
		return
	}
	keep := make(map[int]bool, len(d.attached))
	for _, i := range d.attached {
		keep[i] = true
	}
	for _, i := range pinned {
		if !keep[i] {
			if err := d.dp.Detach(i); err != nil {
				d.log.Warn("cannot detach the datapath from a stale veth", "ifindex", i, "err", err)
			}
		}
	}
}

// problems are the attach failures, for the status.
func (d *datapath) problems() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for id, err := range d.errs {
		out = append(out, fmt.Sprintf("datapath not attached to endpoint %d: %v", id, err))
	}
	return out
}

// installed and removed are the agent's endpointHooks: the map entries
// and policy, then the programs (attached after the entries are wanted,
// so a packet finds its endpoint as soon as the reconciler has run).
func (a *Agent) installed(ep *Endpoint, set labels.Set) {
	a.pol.installEndpoint(ep, set)
	a.dp.attach(ep)
}

func (a *Agent) removed(ep *Endpoint) {
	a.dp.detach(ep)
	a.pol.removeEndpoint(ep)
}

// readFlows moves the datapath's flow events into the hub until ctx ends.
func (a *Agent) readFlows(ctx context.Context) error {
	if a.dp.dp == nil {
		return nil
	}
	r, err := a.dp.dp.Flows()
	if err != nil {
		return fmt.Errorf("flow ring buffer: %w", err)
	}
	// Close unblocks Read; it is idempotent, so the deferred call only
	// makes sure the reader goes when the loop ends another way.
	stop := context.AfterFunc(ctx, func() { _ = r.Close() })
	defer func() { stop(); _ = r.Close() }()
	for {
		f, err := r.Read()
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.log.Warn("cannot read a flow event", "err", err)
			continue
		}
		a.flows.publish(f)
	}
}

// ktimeClock turns the datapath's CLOCK_MONOTONIC nanoseconds into wall
// time: the offset between the two clocks, taken once (wall-clock jumps
// after start shift flows by the jump, which is fine for a flow log).
type ktimeClock struct{ offset int64 }

func newKtimeClock() ktimeClock {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ktimeClock{offset: time.Now().UnixNano() - ts.Nano()}
}

func (c ktimeClock) wall(ktime uint64) int64 { return int64(ktime) + c.offset }

func (a *Agent) flowMsg(f bpf.Flow, clock ktimeClock) *api.Flow {
	m := &api.Flow{
		TimeUnixNano:        clock.wall(f.Time),
		Node:                a.cfg.Node,
		Verdict:             f.Verdict.String(),
		Direction:           f.Direction.String(),
		Protocol:            protoName(f.Proto),
		Source:              f.Src.Addr().String(),
		SourcePort:          uint32(f.Src.Port()),
		SourceIdentity:      f.SrcIdentity,
		Destination:         f.Dst.Addr().String(),
		DestinationPort:     uint32(f.Dst.Port()),
		DestinationIdentity: f.DstIdentity,
		EndpointId:          f.EndpointID,
		TcpFlags:            tcpFlags(f.TCPFlags),
		Reply:               f.Reply,
		SourcePod:           a.podOf(f.Src.Addr().String()),
		DestinationPod:      a.podOf(f.Dst.Addr().String()),
	}
	if f.Verdict == bpf.Dropped {
		m.DropReason = f.Reason.String()
	}
	if f.Service.IsValid() {
		m.Service = f.Service.String()
	}
	return m
}

// podOfAddr is podOf for an address.
func (a *Agent) podOfAddr(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return a.podOf(ip.String())
}

// podOf names the pod of an IP from the ipcache's etcd cache.
func (a *Agent) podOf(ip string) string {
	c := a.epC.Load()
	if c == nil {
		return ""
	}
	e, ok := c.Get(ip)
	if !ok || e.Pod == "" {
		return ""
	}
	return e.Namespace + "/" + e.Pod
}

func protoName(p uint8) string {
	switch p {
	case bpf.ProtoTCP:
		return "TCP"
	case bpf.ProtoUDP:
		return "UDP"
	case bpf.ProtoSCTP:
		return "SCTP"
	case 1:
		return "ICMP"
	}
	return strconv.Itoa(int(p))
}

func tcpFlags(f uint8) string {
	if f == 0 {
		return ""
	}
	names := []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
	var out []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, "|")
}

// datapathCollector reads the datapath's counters at scrape time.
type datapathCollector struct{ a *Agent }

var (
	descPackets   = prometheus.NewDesc("meshplane_datapath_packets_total", "Packets the datapath handled, by direction (relative to the pod), verdict and drop reason.", []string{"direction", "verdict", "reason"}, nil)
	descBytes     = prometheus.NewDesc("meshplane_datapath_bytes_total", "Bytes the datapath handled, by direction, verdict and drop reason.", []string{"direction", "verdict", "reason"}, nil)
	descFlows     = prometheus.NewDesc("meshplane_datapath_flows_total", "Flow events (new connections and drops) read from the ring buffer.", nil, nil)
	descFlowsLost = prometheus.NewDesc("meshplane_datapath_flows_lost_total", "Flow events a slow observer missed.", nil, nil)
	descCT        = prometheus.NewDesc("meshplane_datapath_conntrack_entries", "Entries in the conntrack map.", nil, nil)
	descAttached  = prometheus.NewDesc("meshplane_datapath_endpoints_attached", "Local endpoints with the datapath's programs attached.", nil, nil)
)

func (datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descFlows, descFlowsLost, descCT, descAttached} {
		ch <- d
	}
}

func (c datapathCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	ch <- prometheus.MustNewConstMetric(descFlows, prometheus.CounterValue, float64(a.flows.total.Load()))
	ch <- prometheus.MustNewConstMetric(descFlowsLost, prometheus.CounterValue, float64(a.flows.lost.Load()))
	if a.dp == nil || a.dp.dp == nil {
		return
	}
	a.dp.mu.Lock()
	n := len(a.dp.attached)
	a.dp.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, float64(n))
	if ct, err := a.dp.dp.CTCount(); err == nil {
		ch <- prometheus.MustNewConstMetric(descCT, prometheus.GaugeValue, float64(ct))
	}
	counters, err := a.dp.dp.Counters()
	if err != nil {
		return
	}
	for _, k := range counters {
		verdict, reason := "forwarded", ""
		if k.Reason != 0 {
			verdict, reason = "dropped", k.Reason.String()
		}
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(k.Packets), k.Direction.String(), verdict, reason)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(k.Bytes), k.Direction.String(), verdict, reason)
	}
}
