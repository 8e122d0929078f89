package nodeagent

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/meshplane/meshplane/bpf"
)

// flowHistory is how many recent flows the agent keeps for Observe.
const flowHistory = 4096

// flowSubBuffer is how many flows a follower may lag behind before it
// misses some: a slow client never slows the datapath's reader.
const flowSubBuffer = 1024

// flowHub keeps the recent flows and fans new ones out to followers. The
// reader goroutine publishes; Observe calls subscribe from the gRPC
// goroutines. mu guards ring, next, full and subs.
//
// Flows are kept as the datapath's fixed-size records and turned into API
// messages (strings, pod names) only when someone asks: the agent reads
// thousands a second and most are never looked at.
type flowHub struct {
	mu   sync.Mutex
	ring []bpf.Flow
	next int
	full bool
	subs map[*flowSub]struct{}

	total atomic.Uint64 // flows published
	lost  atomic.Uint64 // flows a slow follower missed
}

// flowSub is one follower.
type flowSub struct {
	f  flowFilter
	ch chan bpf.Flow
}

// flowFilter selects flows for Observe.
type flowFilter struct {
	pod     string // "ns/name" or "name"
	verdict bpf.FlowVerdict
	ip      netip.Addr
	// podOf names the pod of an address ("ns/name"), for the pod filter.
	podOf func(netip.Addr) string
}

func (f flowFilter) match(fl bpf.Flow) bool {
	if f.verdict != 0 && fl.Verdict != f.verdict {
		return false
	}
	if f.ip.IsValid() && fl.Src.Addr() != f.ip && fl.Dst.Addr() != f.ip {
		return false
	}
	if f.pod != "" && !podMatch(f.pod, f.podOf(fl.Src.Addr())) && !podMatch(f.pod, f.podOf(fl.Dst.Addr())) {
		return false
	}
	return true
}

// podMatch reports whether the flow's "ns/name" is ref ("ns/name" or a
// bare name).
func podMatch(ref, pod string) bool {
	if pod == "" {
		return false
	}
	if strings.Contains(ref, "/") {
		return ref == pod
	}
	_, name, _ := strings.Cut(pod, "/")
	return name == ref
}

func newFlowHub() *flowHub {
	return &flowHub{ring: make([]bpf.Flow, flowHistory), subs: make(map[*flowSub]struct{})}
}

// publish records a flow and hands it to every matching follower; it
// never blocks.
func (h *flowHub) publish(fl bpf.Flow) {
	h.total.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = fl
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.full = true
	}
	for s := range h.subs {
		if !s.f.match(fl) {
			continue
		}
		select {
		case s.ch <- fl:
		default:
			h.lost.Add(1)
		}
	}
}

// subscribe returns up to last recent flows that match f, oldest first,
// and, with follow, a follower for the new ones (cancel with
// unsubscribe). Taking both under one lock means none falls in between.
func (h *flowHub) subscribe(f flowFilter, last int, follow bool) ([]bpf.Flow, *flowSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []bpf.Flow
	if last > 0 {
		n := h.next
		if h.full {
			n = len(h.ring)
		}
		for i := range n {
			idx := (h.next - 1 - i + len(h.ring)) % len(h.ring)
			if fl := h.ring[idx]; f.match(fl) {
				out = append(out, fl)
				if len(out) == last {
					break
				}
			}
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	if !follow {
		return out, nil
	}
	s := &flowSub{f: f, ch: make(chan bpf.Flow, flowSubBuffer)}
	h.subs[s] = struct{}{}
	return out, s
}

func (h *flowHub) unsubscribe(s *flowSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
}
