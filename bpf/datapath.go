package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// linksSubdir is the directory beside the maps that holds the pinned tcx
// links, <ifindex>-from-pod and <ifindex>-to-pod.
const linksSubdir = "links"

// The two programs and where each is attached on a pod's host veth.
var attachments = []struct {
	suffix string // of the link's pin
	attach ebpf.AttachType
	prog   func(d *Datapath) *ebpf.Program
}{
	// What the pod sends arrives at the host veth's ingress.
	{"from-pod", ebpf.AttachTCXIngress, func(d *Datapath) *ebpf.Program { return d.fromPod }},
	// What goes into the pod leaves through the host veth's egress.
	{"to-pod", ebpf.AttachTCXEgress, func(d *Datapath) *ebpf.Program { return d.toPod }},
}

// Datapath is the datapath's programs loaded into the kernel, bound to the
// agent's maps, and the datapath's own maps: conntrack (mp_ct), flow events
// (mp_flows) and counters (mp_counters), pinned beside the agent's.
//
// Attachments (cls_bpf filters on the veth in tc mode, tcx links pinned
// under <PinDir>/links in tcx mode: Config.Attach) hold the programs, so
// they keep running when the Datapath is closed or the agent exits; a new
// agent's Attach swaps its programs in atomically. All methods may be
// called concurrently; Close waits for calls in progress.
type Datapath struct {
	cfg      Config // with defaults
	linksDir string

	mu         sync.RWMutex // mu guards the fields below: nil once closed
	fromPod    *ebpf.Program
	toPod      *ebpf.Program
	fromTunnel *ebpf.Program
	toTunnel   *ebpf.Program
	ct         *Map[CTKey, CTValue]
	flows      *ebpf.Map
	counters   *ebpf.Map
}

// datapathMapDefs returns the definitions of the datapath's own maps for c
// (with defaults). The conntrack map is an LRU hash, preallocated as LRU
// maps always are.
func (c Config) datapathMapDefs() (ct, flows, counters mapDef) {
	return mapDef{CTMapName, ebpf.LRUHash, 0, c.CTMax, "CTMax"},
		mapDef{FlowsMapName, ebpf.RingBuf, 0, c.FlowRingBytes, "FlowRingBytes"},
		mapDef{CountersMapName, ebpf.PerCPUArray, 0, countersMax, "(none: it is fixed)"}
}

// The layout of mp_counters (MP_COUNTER in C): index direction*32 + reason,
// index 0 the flow events lost.
const (
	countersMax     = 3 * maxDropReason
	counterLostFlow = 0
)

// LoadDatapath loads the datapath's programs, bound to the agent's maps m
// (as OpenMaps returns them for the same cfg), and opens the datapath's
// own maps pinned in cfg.PinDir(), creating those that are absent, under
// the rules of OpenMaps: a pinned map is reused with its contents (so
// connections tracked by a previous agent's programs survive), and one
// that differs from what cfg wants fails with ErrIncompatible. Without the
// privileges or kernel features it fails with ErrNotSupported; a program
// the kernel's verifier rejects fails with the verifier's log.
//
// Loading attaches nothing: see Attach.
func LoadDatapath(cfg Config, m *Maps) (*Datapath, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	if m == nil || m.IPCache == nil || m.Endpoints == nil || m.Policy == nil || m.Services == nil || m.Backends == nil || m.CIDR == nil {
		return nil, errors.New("load datapath: the agent's maps are missing: pass what OpenMaps returned")
	}
	cfg = cfg.withDefaults()
	if err := CheckSupport(cfg.Dir); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	dir := cfg.PinDir()
	d := &Datapath{cfg: cfg, linksDir: filepath.Join(dir, linksSubdir)}
	if err := os.MkdirAll(d.linksDir, 0o755); err != nil {
		return nil, fmt.Errorf("load datapath: create pin directory: %w", classify(err))
	}

	ct, flows, counters := cfg.datapathMapDefs()
	var err error
	if d.ct, err = openMap[CTKey, CTValue](dir, ct); err != nil {
		return nil, fmt.Errorf("load datapath: %w", errors.Join(err, d.Close()))
	}
	if d.flows, err = openPinnedSpec(dir, flows, 0, 0); err != nil {
		return nil, fmt.Errorf("load datapath: %w", errors.Join(err, d.Close()))
	}
	if d.counters, err = openPinnedSpec(dir, counters, 4, uint32(counterValueSize)); err != nil {
		return nil, fmt.Errorf("load datapath: %w", errors.Join(err, d.Close()))
	}
	if err := d.load(m); err != nil {
		return nil, fmt.Errorf("load datapath: %w", errors.Join(err, d.Close()))
	}
	return d, nil
}

// counterValueSize is the size of a counterValue (TestABISizes pins it).
const counterValueSize = 16

// load loads the programs with the maps of m and d.
func (d *Datapath) load(m *Maps) error {
	spec, err := loadDp()
	if err != nil {
		return err
	}
	repl := make(map[string]*ebpf.Map)
	defer func() {
		for _, em := range repl {
			_ = em.Close()
		}
	}()
	clones := []struct {
		name  string
		clone func() (*ebpf.Map, error)
	}{
		{IPCacheMapName, m.IPCache.clone},
		{EndpointsMapName, m.Endpoints.clone},
		{PolicyMapName, m.Policy.clone},
		{ServicesMapName, m.Services.clone},
		{BackendsMapName, m.Backends.clone},
		{CIDRMapName, m.CIDR.clone},
		{CTMapName, d.ct.clone},
		{FlowsMapName, d.flows.Clone},
		{CountersMapName, d.counters.Clone},
	}
	for _, c := range clones {
		em, err := c.clone()
		if err != nil {
			return fmt.Errorf("map %s: %w", c.name, err)
		}
		repl[c.name] = em
		ms, ok := spec.Maps[c.name]
		if !ok {
			return fmt.Errorf("the datapath object has no map %s", c.name)
		}
		// The object's sizes are placeholders: the pinned maps are sized by
		// Config.
		ms.MaxEntries = em.MaxEntries()
	}
	var progs dpPrograms
	if err := spec.LoadAndAssign(&progs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return fmt.Errorf("load programs: %w", classify(err))
	}
	d.fromPod, d.toPod = progs.FromPod, progs.ToPod
	d.fromTunnel, d.toTunnel = progs.FromTunnel, progs.ToTunnel
	return nil
}

// clone returns a new fd of the map, which the caller closes.
func (m *Map[K, V]) clone() (*ebpf.Map, error) {
	var c *ebpf.Map
	err := m.do(func(em *ebpf.Map) error {
		var err error
		c, err = em.Clone()
		return err
	})
	return c, err
}

// Close closes the programs and the datapath's file descriptors. The
// attachments and pinned maps stay, so attached veths keep forwarding with these
// programs until a new Datapath's Attach replaces them or Detach removes
// them. It may be called more than once.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, c := range []interface{ Close() error }{d.fromPod, d.toPod, d.fromTunnel, d.toTunnel, d.flows, d.counters} {
		// Typed nils (what a failed LoadDatapath leaves) close as no-ops.
		errs = append(errs, c.Close())
	}
	if d.ct != nil {
		errs = append(errs, d.ct.Close())
	}
	d.fromPod, d.toPod, d.fromTunnel, d.toTunnel, d.flows, d.counters, d.ct = nil, nil, nil, nil, nil, nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close datapath: %w", err)
	}
	return nil
}

// open runs fn under the read lock, or fails if the Datapath is closed.
func (d *Datapath) open(fn func() error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.fromPod == nil {
		return os.ErrClosed
	}
	return fn()
}

// linkPin returns the pin path of the link of suffix on ifindex.
func (d *Datapath) linkPin(ifindex int, suffix string) string {
	return filepath.Join(d.linksDir, strconv.Itoa(ifindex)+"-"+suffix)
}

// Attach attaches the programs to the host side of a pod's veth, ifindex
// in the network namespace of the calling thread (the node's: lock the OS
// thread and switch before calling), in the mode of Config.Attach:
//
//   - AttachTC: cls_bpf filters on the veth's clsact hooks (see
//     AttachMode). They live as long as the veth.
//   - AttachTCX: tcx links pinned under <PinDir>/links, so that they
//     outlive the agent. A pin whose link no longer points at ifindex
//     (the veth is gone and its index reused) is replaced.
//
// Attach is idempotent. Where the programs are attached already (by a
// previous agent, or this one), it swaps this Datapath's programs in
// atomically (tc filter replace; BPF_LINK_UPDATE): no packet goes
// unprocessed and, since conntrack lives in a pinned map, established
// connections survive. An attachment of the other mode (an agent that ran
// with the other Config.Attach) is removed once the new one is in place:
// tcx runs before cls_bpf and its verdict is final, so for the moment both
// are there the old programs alone run, and then the new ones. If
// attaching the second program fails the first stays attached; calling
// Attach again completes it, Detach undoes it.
func (d *Datapath) Attach(ifindex int) error {
	if ifindex <= 0 {
		return fmt.Errorf("attach datapath: ifindex %d: want an interface index", ifindex)
	}
	err := d.open(func() error {
		if d.cfg.Attach == AttachTCX {
			if err := d.attachTCX(ifindex); err != nil {
				return err
			}
			return detachTC(d.cfg.Node, ifindex)
		}
		if err := d.attachTC(ifindex); err != nil {
			return err
		}
		if d.hasTCXPins(ifindex) {
			return d.detachTCX(ifindex)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("attach datapath to ifindex %d: %w", ifindex, err)
	}
	return nil
}

func (d *Datapath) attach(ifindex int, suffix string, at ebpf.AttachType, prog *ebpf.Program) error {
	return attachPinned(d.linkPin(ifindex, suffix), ifindex, at, prog)
}

// attachPinned attaches prog to ifindex at at with a tcx link pinned at
// path, or swaps prog into the link pinned there (see Attach).
func attachPinned(path string, ifindex int, at ebpf.AttachType, prog *ebpf.Program) error {
	l, err := link.LoadPinnedLink(path, nil)
	switch {
	case err == nil:
		info, err := l.Info()
		if err != nil {
			// Not knowing what it is, leave it: replacing a live link
			// would leave the veth without programs for a moment.
			return errors.Join(fmt.Errorf("pinned link %s: %w", path, err), l.Close())
		}
		if tcx := info.TCX(); tcx != nil && int(tcx.Ifindex) == ifindex && ebpf.AttachType(tcx.AttachType) == at {
			if err := l.Update(prog); err != nil {
				return errors.Join(fmt.Errorf("update pinned link %s: %w", path, err), l.Close())
			}
			return l.Close()
		}
		// Stale: the interface it was attached to is gone (the kernel
		// reports ifindex 0) and its index reused. Unpinning and closing
		// the last reference releases it.
		if err := errors.Join(l.Unpin(), l.Close()); err != nil {
			return fmt.Errorf("remove stale link %s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return fmt.Errorf("open pinned link %s: %w", path, classify(err))
	}

	l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
	if errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("no interface with index %d in this thread's network namespace: %w", ifindex, err)
	}
	if err != nil {
		return classify(err)
	}
	if err := l.Pin(path); err != nil {
		// A concurrent Attach pinned its link first; closing ours detaches
		// the duplicate.
		return errors.Join(fmt.Errorf("pin link %s: %w", path, err), l.Close())
	}
	return l.Close()
}

// Detach detaches the programs from ifindex, in the calling thread's
// network namespace (as Attach), whichever mode attached them: it removes
// the pinned tcx links and the tc filters of ours. What is not there is no
// error, nor is a veth that is gone.
//
// Deleting a pod's veth detaches its tc filters with it, so Detach before
// the delete is not needed in tc mode; it costs a filter dump and delete
// per hook, no RCU grace period. Removing a tcx link from a live veth
// waits for one (see AttachMode).
func (d *Datapath) Detach(ifindex int) error {
	var errs []error
	if d.hasTCXPins(ifindex) {
		errs = append(errs, d.detachTCX(ifindex))
	}
	errs = append(errs, detachTC(d.cfg.Node, ifindex))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach datapath from ifindex %d: %w", ifindex, err)
	}
	return nil
}

// detachPinned removes the link pinned at path; none there is no error.
func detachPinned(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned link %s: %w", path, classify(err))
	}
	// Closing our fd last makes the release, and so the detach,
	// synchronous: the unpin alone would free the link from a
	// workqueue.
	return errors.Join(l.Unpin(), l.Close())
}

// The tunnel programs and where each is attached on the VXLAN device:
// pinned as <PinDir>/links/tunnel-<suffix>, names that Attached never
// lists, so pruning pods' veths leaves them alone.
var tunnelAttachments = []struct {
	suffix string
	attach ebpf.AttachType
	prog   func(d *Datapath) *ebpf.Program
}{
	// What the device decapsulated arrives at its ingress.
	{"from-tunnel", ebpf.AttachTCXIngress, func(d *Datapath) *ebpf.Program { return d.fromTunnel }},
	// What the node routes into the tunnel leaves through its egress.
	{"to-tunnel", ebpf.AttachTCXEgress, func(d *Datapath) *ebpf.Program { return d.toTunnel }},
}

func (d *Datapath) tunnelPin(suffix string) string {
	return filepath.Join(d.linksDir, "tunnel-"+suffix)
}

// AttachTunnel attaches the tunnel programs to the node's flow-based
// (external, collect_metadata) VXLAN device, ifindex in the calling
// thread's network namespace: to_tunnel on its egress sets the tunnel key
// (the remote node, from the ipcache) of what the node routes into it,
// from_tunnel on its ingress delivers what it decapsulates to the pod's
// host veth. As Attach: pinned, idempotent, and an atomic swap of the
// programs where the links are pinned already; a pin whose link is on
// another (gone) device is replaced.
func (d *Datapath) AttachTunnel(ifindex int) error {
	if ifindex <= 0 {
		return fmt.Errorf("attach tunnel programs: ifindex %d: want an interface index", ifindex)
	}
	err := d.open(func() error {
		for _, a := range tunnelAttachments {
			if err := attachPinned(d.tunnelPin(a.suffix), ifindex, a.attach, a.prog(d)); err != nil {
				return fmt.Errorf("%s: %w", a.suffix, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("attach tunnel programs to ifindex %d: %w", ifindex, err)
	}
	return nil
}

// DetachTunnel removes the tunnel programs' pinned links (native routing
// needs none). Links that are not there are no error.
func (d *Datapath) DetachTunnel() error {
	var errs []error
	for _, a := range tunnelAttachments {
		errs = append(errs, detachPinned(d.tunnelPin(a.suffix)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach tunnel programs: %w", err)
	}
	return nil
}

// Attached returns the ifindexes with the programs attached, in ascending
// order, in either mode, by this agent or an earlier one: those with a
// pinned tcx link, and the interfaces of the calling thread's network
// namespace with a tc filter of ours (named for this Config's Node, so
// another node's agent in the same namespace has its own). tc filters go
// with their veth; tcx links of veths that are gone stay pinned (and
// inert) until Detach.
func (d *Datapath) Attached() ([]int, error) {
	out, err := d.attachedTCX()
	if err != nil {
		return nil, fmt.Errorf("list attached: %w", err)
	}
	tc, err := attachedTC(d.cfg.Node)
	if err != nil {
		return nil, fmt.Errorf("list attached: %w", err)
	}
	out = append(out, tc...)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Flows returns a reader of the flow events. Keep one reader at a time:
// see FlowReader.
func (d *Datapath) Flows() (*FlowReader, error) {
	var r *FlowReader
	err := d.open(func() error {
		var err error
		r, err = newFlowReader(d.flows)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("datapath: %w", err)
	}
	return r, nil
}

// Counters returns the packets and bytes the datapath handled per
// direction and drop reason (NotDropped: forwarded), summed over CPUs,
// the non-zero ones only, in direction and reason order. They count from
// the counters map's creation: they survive agent restarts.
func (d *Datapath) Counters() ([]Counter, error) {
	var out []Counter
	err := d.open(func() error {
		var vals []counterValue
		for _, dir := range []Direction{Ingress, Egress} {
			for reason := range maxDropReason {
				idx := uint32(int(dir)*maxDropReason + reason)
				if err := d.counters.Lookup(idx, &vals); err != nil {
					return fmt.Errorf("look up %d: %w", idx, err)
				}
				c := Counter{Direction: dir, Reason: DropReason(reason)}
				for _, v := range vals {
					c.Packets += v.Packets
					c.Bytes += v.Bytes
				}
				if c.Packets != 0 || c.Bytes != 0 {
					out = append(out, c)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("datapath counters: %w", err)
	}
	return out, nil
}

// FlowsLost returns how many flow events the datapath could not write
// because the ring buffer was full (the reader was too slow; raise
// Config.FlowRingBytes). The packets were handled all the same.
func (d *Datapath) FlowsLost() (uint64, error) {
	var n uint64
	err := d.open(func() error {
		var vals []counterValue
		if err := d.counters.Lookup(uint32(counterLostFlow), &vals); err != nil {
			return err
		}
		for _, v := range vals {
			n += v.Packets
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("datapath flows lost: %w", err)
	}
	return n, nil
}

// CTCount returns the number of entries in the conntrack map, expired
// ones that LRU eviction has not reclaimed yet included. It walks the map.
func (d *Datapath) CTCount() (int, error) {
	var n int
	err := d.open(func() error {
		var err error
		n, err = d.ct.Count()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("datapath conntrack: %w", err)
	}
	return n, nil
}

// Conntrack returns the conntrack map, for inspection (meshctl, tests that
// age entries). It belongs to d: Close closes it, and after Close
// Conntrack returns nil.
func (d *Datapath) Conntrack() *Map[CTKey, CTValue] {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.ct
}
