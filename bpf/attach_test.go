package bpf_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/bpf"
)

// hookParent is the clsact hook of each pod program.
var hookParent = map[string]uint32{"from-pod": netlink.HANDLE_MIN_INGRESS, "to-pod": netlink.HANDLE_MIN_EGRESS}

// tcFilters returns the cls_bpf filters on ifindex's hook of suffix that
// carry the datapath's handle, priority and this node's name.
func (n *testNode) tcFilters(ifindex int, suffix string) []*netlink.BpfFilter {
	n.t.Helper()
	fs, err := n.ns.Netlink().FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, hookParent[suffix])
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // no clsact
		}
		n.t.Fatalf("list filters of %d: %v", ifindex, err)
	}
	var out []*netlink.BpfFilter
	for _, f := range fs {
		b, ok := f.(*netlink.BpfFilter)
		if ok && b.Handle == bpf.TCHandle && b.Priority == bpf.TCPriority && b.Name == "meshplane/"+n.cfg.Node+"/"+suffix {
			out = append(out, b)
		}
	}
	return out
}

// attached is the datapath's Attached, from the node's namespace.
func (n *testNode) attached() ([]int, error) {
	var got []int
	err := n.ns.Do(func() error {
		var err error
		got, err = n.dp.Attached()
		return err
	})
	return got, err
}

// tcxPins returns the pinned tcx links of ifindex.
func (n *testNode) tcxPins(ifindex int) []string {
	var out []string
	for _, s := range []string{"from-pod", "to-pod"} {
		p := filepath.Join(n.cfg.PinDir(), "links", strconv.Itoa(ifindex)+"-"+s)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// wantMode fails unless ifindex has exactly the attachment of mode: one
// filter of ours per hook and no pin (tc), or both pins and no filter of
// ours (tcx).
func (n *testNode) wantMode(t *testing.T, ifindex int, mode bpf.AttachMode) {
	t.Helper()
	filters := len(n.tcFilters(ifindex, "from-pod")) + len(n.tcFilters(ifindex, "to-pod"))
	pins := len(n.tcxPins(ifindex))
	switch {
	case mode == bpf.AttachTC && (filters != 2 || pins != 0),
		mode == bpf.AttachTCX && (filters != 0 || pins != 2):
		t.Fatalf("ifindex %d: %d tc filters of ours, %d tcx pins; want the %s attachment only", ifindex, filters, pins, mode)
	}
}

// TestAttachTC checks tc mode's kernel objects: a clsact qdisc and one
// direct-action filter of ours per hook; a re-attach with another
// Datapath's programs swaps the program in the same filter; someone
// else's filter on the same hook is never touched; Detach removes ours
// only. Traffic through the veth is policed all along.
func TestAttachTC(t *testing.T) {
	n := newNodeMode(t, bpf.AttachTC)
	a := n.addPod("a", "10.200.0.1", 70001)
	b := n.addPod("b", "10.200.0.2", 70002)
	b.serveTCP(8080)
	b.setFlags(bpf.EndpointPolicyIngress)
	reaches := func(want bool) {
		t.Helper()
		timeout := deniedTimeout
		if want {
			timeout = allowedTimeout
		}
		if _, err := a.tcp(b.ip.String()+":8080", timeout); (err == nil) != want {
			t.Fatalf("a -> b: %v; want through: %v", err, want)
		}
	}
	n.wantMode(t, b.host.Index, bpf.AttachTC)
	f := n.tcFilters(b.host.Index, "from-pod")[0]
	if !f.DirectAction || f.Protocol != unix.ETH_P_ALL {
		t.Errorf("filter %+v: want direct-action, all protocols", f)
	}
	reaches(false)

	// Someone else's filter on b's ingress, after ours.
	nl := n.ns.Netlink()
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pass.Close()
	foreign := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{
		LinkIndex: b.host.Index, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1, Priority: 0xc000, Protocol: unix.ETH_P_ALL,
	}, Fd: pass.FD(), Name: "someone-else", DirectAction: true}
	if err := nl.FilterAdd(foreign); err != nil {
		t.Fatalf("add a foreign filter: %v", err)
	}
	foreignThere := func() bool {
		t.Helper()
		fs, err := nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: b.host.Index}}, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			if b, ok := f.(*netlink.BpfFilter); ok && b.Priority == 0xc000 && b.Name == "someone-else" {
				return true
			}
		}
		return false
	}

	// A new Datapath (an agent restart): the same filter, a new program.
	before := f.Id
	if err := n.dp.Close(); err != nil {
		t.Fatal(err)
	}
	n.load()
	n.attach(b.host.Index)
	n.wantMode(t, b.host.Index, bpf.AttachTC)
	if after := n.tcFilters(b.host.Index, "from-pod")[0].Id; after == before {
		t.Errorf("the filter still runs program %d after a re-attach with new programs", before)
	}
	if !foreignThere() {
		t.Fatal("re-attach removed a foreign filter")
	}
	reaches(false)
	b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080, bpf.Allow)
	reaches(true)
	b.deletePolicy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080)

	if err := n.ns.Do(func() error { return n.dp.Detach(b.host.Index) }); err != nil {
		t.Fatal(err)
	}
	if fs := n.tcFilters(b.host.Index, "from-pod"); len(fs) != 0 {
		t.Fatalf("%d filters of ours after Detach", len(fs))
	}
	if !foreignThere() {
		t.Fatal("Detach removed a foreign filter")
	}
	reaches(true)
	got, err := n.attached()
	if err != nil || len(got) != 1 || got[0] != a.host.Index {
		t.Fatalf("Attached() = %v, %v; want [%d]", got, err, a.host.Index)
	}

	// The uninstall: RemoveFilters takes this node's filters off every
	// veth, and leaves the foreign one.
	n.attach(b.host.Index)
	if err := n.ns.Do(func() error { return bpf.RemoveFilters(n.cfg) }); err != nil {
		t.Fatal(err)
	}
	if got, err := n.attached(); err != nil || len(got) != 0 {
		t.Fatalf("Attached() after RemoveFilters = %v, %v; want none", got, err)
	}
	if !foreignThere() {
		t.Fatal("RemoveFilters removed a foreign filter")
	}
	reaches(true)
}

// TestAttachModeSwitch restarts the datapath in the other attachment mode,
// tcx to tc and back, as an agent restarted with another
// --datapath-attach does: after each Attach the veth has the new mode's
// attachment only, an established connection survives, and policy holds.
func TestAttachModeSwitch(t *testing.T) {
	n := newNodeMode(t, bpf.AttachTCX)
	a := n.addPod("a", "10.200.0.1", 70001)
	b := n.addPod("b", "10.200.0.2", 70002)
	b.serveTCP(8080)
	b.setFlags(bpf.EndpointPolicyIngress)
	b.policy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080, bpf.Allow)
	c, err := a.dialTCP(b.ip.String()+":8080", netip.Addr{}, allowedTimeout)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	b.deletePolicy(bpf.Ingress, a.identity, bpf.ProtoTCP, 8080)
	n.wantMode(t, b.host.Index, bpf.AttachTCX)

	for _, mode := range []bpf.AttachMode{bpf.AttachTC, bpf.AttachTCX, bpf.AttachTC} {
		if err := n.dp.Close(); err != nil {
			t.Fatal(err)
		}
		n.cfg.Attach = mode
		n.load()
		n.attach(a.host.Index)
		n.attach(b.host.Index)
		n.wantMode(t, a.host.Index, mode)
		n.wantMode(t, b.host.Index, mode)
		if name, err := c.exchange(allowedTimeout); err != nil || name != "b" {
			t.Fatalf("after the switch to %s: exchange on the established connection: %q, %v", mode, name, err)
		}
		if _, err := a.tcp(b.ip.String()+":8080", deniedTimeout); err == nil {
			t.Fatalf("after the switch to %s: a new connection got through without an allow", mode)
		}
		got, err := n.attached()
		if err != nil || len(got) != 2 {
			t.Fatalf("after the switch to %s: Attached() = %v, %v; want a's and b's veths", mode, got, err)
		}
	}
}

// BenchmarkAttach measures Attach and Detach of a pod's veth in each mode
// (one op: both programs), on fresh veths. The pod's DEL deletes the veth
// right after the agent's Detach; "delete-veth" measures that delete with
// the programs attached, Detach skipped.
func BenchmarkAttach(b *testing.B) {
	for _, mode := range []bpf.AttachMode{bpf.AttachTC, bpf.AttachTCX} {
		b.Run(string(mode), func(b *testing.B) {
			n := newNodeMode(b, mode)
			nl := n.ns.Netlink()
			veths := func(count int) []int {
				b.StopTimer()
				defer b.StartTimer()
				out := make([]int, count)
				for i := range out {
					name := "bench" + strconv.Itoa(i)
					if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
						b.Fatal(err)
					}
					l, err := nl.LinkByName(name)
					if err != nil {
						b.Fatal(err)
					}
					out[i] = l.Attrs().Index
				}
				return out
			}
			del := func(idx []int) {
				for _, i := range idx {
					if err := nl.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: i}}); err != nil {
						b.Fatal(err)
					}
				}
			}
			each := func(idx []int, f func(int) error) {
				if err := n.ns.Do(func() error {
					for _, i := range idx {
						if err := f(i); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
			b.Run("attach", func(b *testing.B) {
				idx := veths(b.N)
				b.ResetTimer()
				each(idx, n.dp.Attach)
				b.StopTimer()
				each(idx, n.dp.Detach)
				del(idx)
			})
			b.Run("detach", func(b *testing.B) {
				idx := veths(b.N)
				b.StopTimer()
				each(idx, n.dp.Attach)
				b.StartTimer()
				each(idx, n.dp.Detach)
				b.StopTimer()
				del(idx)
			})
			b.Run("delete-veth", func(b *testing.B) {
				idx := veths(b.N)
				b.StopTimer()
				each(idx, n.dp.Attach)
				b.StartTimer()
				del(idx)
				b.StopTimer()
				each(idx, n.dp.Detach) // the stale tcx pins
			})
		})
	}
}
