package bpf

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachMode is how Datapath.Attach hooks the programs to a pod's host
// veth (Config.Attach).
//
// AttachTC is the default because of what attaching costs under load.
// Attaching or detaching a tcx link (BPF_LINK_CREATE, and the release of
// a link) waits for an RCU grace period (synchronize_rcu in tcx's
// tcx_entry_sync) while holding RTNL, so every attach on the node,
// whichever agent or CNI call makes it, queues behind the grace periods
// of the others: about 12 ms each on a 6.18 kernel with HZ=250, two per
// veth. A cls_bpf filter is swapped in with RCU pointer updates whose
// old objects are freed later (call_rcu): about 1.2 ms each on the same
// veths. docs/datapath.md ("Attachments and upgrades") has the measurements.
type AttachMode string

// The attachment modes.
const (
	// AttachTC hooks the programs with the legacy TC interface: a clsact
	// qdisc on the veth and a cls_bpf filter in direct-action mode on
	// each of its hooks, with this package's handle and priority
	// (TCHandle, TCPriority) and a name that says whose it is
	// (meshplane/<node>/from-pod), so filters of others on the same veth
	// are never touched. Re-attaching replaces the program in the filter
	// in place (tc filter replace): no packet goes unprocessed. The
	// filters live as long as the veth; nothing is pinned.
	AttachTC AttachMode = "tc"
	// AttachTCX hooks them with tcx links pinned under <PinDir>/links;
	// re-attaching updates the links (BPF_LINK_UPDATE).
	AttachTCX AttachMode = "tcx"
)

// The handle and priority of the datapath's cls_bpf filters. The
// priority is below the ones the kernel picks for filters added without
// one (49152 and down), so ours run first, and a priority of its own
// keeps our filter in a tcf_proto of its own: a filter of another kind
// at another priority cannot conflict with it.
const (
	TCHandle   = 0x6d70 // "mp"
	TCPriority = 0x6d70
)

// The TC hooks of the pod attachments, by attachment suffix.
var tcParents = map[string]uint32{
	"from-pod": netlink.HANDLE_MIN_INGRESS,
	"to-pod":   netlink.HANDLE_MIN_EGRESS,
}

// tcName is the name of the filter of suffix: it says which agent (node)
// attached it, so that Attached lists only this node's veths when several
// agents share a network namespace (tests, a lab without netns).
func tcName(node, suffix string) string {
	return "meshplane/" + node + "/" + suffix
}

// attachTC puts the pod programs on ifindex's clsact hooks.
func (d *Datapath) attachTC(ifindex int) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	// Add, not replace: the kernel cannot regraft a clsact qdisc, and one
	// that is there (ours, or someone's) is what we need.
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("no interface with index %d in this thread's network namespace: %w", ifindex, err)
		}
		return fmt.Errorf("add clsact qdisc: %w", classify(err))
	}
	for _, a := range attachments {
		f := tcFilter(ifindex, a.suffix)
		f.Fd = a.prog(d).FD()
		f.Name = tcName(d.cfg.Node, a.suffix)
		f.DirectAction = true
		// Replace: creates the filter, or swaps the program of ours
		// atomically (cls_bpf replaces it under RCU).
		if err := netlink.FilterReplace(f); err != nil {
			if errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("%s: no interface with index %d in this thread's network namespace: %w", a.suffix, ifindex, err)
			}
			return fmt.Errorf("%s: replace tc filter: %w", a.suffix, classify(err))
		}
	}
	return nil
}

func tcFilter(ifindex int, suffix string) *netlink.BpfFilter {
	return &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{
		LinkIndex: ifindex, Parent: tcParents[suffix], Handle: TCHandle, Priority: TCPriority, Protocol: unix.ETH_P_ALL,
	}}
}

// tcOurs returns the suffixes of node's filters on ifindex.
func tcOurs(node string, ifindex int) ([]string, error) {
	var out []string
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
	for _, a := range attachments {
		fs, err := netlink.FilterList(link, tcParents[a.suffix])
		if err != nil {
			// No such device, or no clsact on it: nothing of ours.
			if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("list tc filters of ifindex %d: %w", ifindex, classify(err))
		}
		if slices.ContainsFunc(fs, func(f netlink.Filter) bool { return isOurs(f, node, a.suffix) }) {
			out = append(out, a.suffix)
		}
	}
	return out, nil
}

func isOurs(f netlink.Filter, node, suffix string) bool {
	b, ok := f.(*netlink.BpfFilter)
	return ok && b.Handle == TCHandle && b.Priority == TCPriority && b.Name == tcName(node, suffix)
}

// detachTC removes node's filters from ifindex, if it has any; the clsact
// qdisc stays (others' filters may hang on it; it goes with the veth). A
// veth that is gone is no error: its filters went with it.
func detachTC(node string, ifindex int) error {
	ours, err := tcOurs(node, ifindex)
	if err != nil {
		return err
	}
	var errs []error
	for _, suffix := range ours {
		// Deleting a filter frees it through call_rcu: no grace period
		// is waited for.
		err := netlink.FilterDel(tcFilter(ifindex, suffix))
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("%s: delete tc filter: %w", suffix, classify(err)))
		}
	}
	return errors.Join(errs...)
}

// attachedTC returns the interfaces of the calling thread's network
// namespace that have a filter of node's: those with a clsact qdisc (one
// dump lists them all), then their filters.
func attachedTC(node string) ([]int, error) {
	qdiscs, err := netlink.QdiscList(nil)
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", classify(err))
	}
	var out []int
	for _, q := range qdiscs {
		if q.Type() != "clsact" {
			continue
		}
		i := q.Attrs().LinkIndex
		ours, err := tcOurs(node, i)
		if err != nil {
			return nil, err
		}
		if len(ours) > 0 {
			out = append(out, i)
		}
	}
	return out, nil
}

// RemoveFilters removes the tc filters of cfg.Node's datapath (what
// Attach makes in AttachTC mode) from every interface of the calling
// thread's network namespace (the node's), and leaves everything else:
// others' filters, the clsact qdiscs, the pins. RemovePins does not touch
// the interfaces, so an uninstall runs both: otherwise the pods' veths
// keep running the last agent's programs on maps nobody updates.
func RemoveFilters(cfg Config) error {
	if err := checkNode(cfg.Node); err != nil {
		return fmt.Errorf("remove tc filters: %w", err)
	}
	idx, err := attachedTC(cfg.Node)
	if err != nil {
		return fmt.Errorf("remove tc filters: %w", err)
	}
	var errs []error
	for _, i := range idx {
		if err := detachTC(cfg.Node, i); err != nil {
			errs = append(errs, fmt.Errorf("ifindex %d: %w", i, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove tc filters: %w", err)
	}
	return nil
}

// attachedTCX returns the ifindexes with a pinned tcx link.
func (d *Datapath) attachedTCX() ([]int, error) {
	entries, err := os.ReadDir(d.linksDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list pinned links: %w", err)
	}
	var out []int
	for _, e := range entries {
		for _, a := range attachments {
			s, ok := strings.CutSuffix(e.Name(), "-"+a.suffix)
			if !ok {
				continue
			}
			if i, err := parseIfindex(s); err == nil {
				out = append(out, i)
			}
		}
	}
	return out, nil
}

// attachTCX puts the pod programs on ifindex with pinned tcx links.
func (d *Datapath) attachTCX(ifindex int) error {
	for _, a := range attachments {
		if err := d.attach(ifindex, a.suffix, a.attach, a.prog(d)); err != nil {
			return fmt.Errorf("%s: %w", a.suffix, err)
		}
	}
	return nil
}

// detachTCX removes ifindex's pinned tcx links, if any.
func (d *Datapath) detachTCX(ifindex int) error {
	var errs []error
	for _, a := range attachments {
		errs = append(errs, detachPinned(d.linkPin(ifindex, a.suffix)))
	}
	return errors.Join(errs...)
}

// hasTCXPins reports whether ifindex has a pinned tcx link: a stat, so
// that tc mode pays nothing for the other mode where it was never used.
func (d *Datapath) hasTCXPins(ifindex int) bool {
	for _, a := range attachments {
		if _, err := os.Stat(d.linkPin(ifindex, a.suffix)); err == nil {
			return true
		}
	}
	return false
}

func parseIfindex(s string) (int, error) {
	i, err := strconv.Atoi(s)
	if err != nil || i <= 0 {
		return 0, fmt.Errorf("not an ifindex: %q", s)
	}
	return i, nil
}
