package healthbench

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/lab"
)

// pollInterval is how often the poller reads every pair from the maps.
const pollInterval = 20 * time.Millisecond

// pair is a node (target) as another node (observer) has it in its maps.
type pair struct{ observer, target string }

// removal is a time a pair went from present to absent.
type removal struct {
	pair
	at time.Time
}

// target is what an observer's maps hold of a node when it is present.
type target struct {
	name     string
	frontend bpf.ServiceKey // slot 0 of the node's service
	cidr     bpf.IPCacheKey // the node's pod CIDR
	ip       netip.Addr     // where the route to the CIDR points
}

// nodeMaps are an observer's pinned maps.
type nodeMaps struct {
	services *bpf.Map[bpf.ServiceKey, bpf.ServiceValue]
	ipcache  *bpf.Map[bpf.IPCacheKey, bpf.IPCacheValue]
}

// poller reads every (observer, target) pair from the observers' pinned
// maps every pollInterval and records the removals. Its goroutine runs
// from start to stop.
type poller struct {
	maps    map[string]nodeMaps
	targets []target
	done    chan struct{}
	wg      sync.WaitGroup

	mu       sync.Mutex // guards the fields below
	present  map[pair]bool
	removals []removal
	err      error // the first read error
}

// newPoller opens the pinned maps of the lab's nodes, nodes[i] being the
// node of service i+1.
func newPoller(l *lab.Lab, nodes []string) (*poller, error) {
	p := &poller{maps: make(map[string]nodeMaps), present: make(map[pair]bool), done: make(chan struct{})}
	for i, name := range nodes {
		n, err := l.Node(cluster, name)
		if err != nil {
			return p, err
		}
		if !n.PodCIDR.IsValid() {
			return p, fmt.Errorf("node %s has no pod CIDR", n.Name)
		}
		dir := bpf.Config{Dir: l.BPFFS(cluster), Node: n.Name}.PinDir()
		svc, err := bpf.OpenPinned[bpf.ServiceKey, bpf.ServiceValue](filepath.Join(dir, bpf.ServicesMapName))
		if err != nil {
			return p, err
		}
		ipc, err := bpf.OpenPinned[bpf.IPCacheKey, bpf.IPCacheValue](filepath.Join(dir, bpf.IPCacheMapName))
		if err != nil {
			return p, errors.Join(err, svc.Close())
		}
		p.maps[n.Name] = nodeMaps{services: svc, ipcache: ipc}
		p.targets = append(p.targets, target{
			name:     n.Name,
			frontend: bpf.ServiceKeyFor(netip.AddrPortFrom(serviceIP(i+1), echoPort), 6, 0),
			cidr:     bpf.IPCacheKeyFor(n.PodCIDR),
			ip:       n.IP,
		})
	}
	return p, nil
}

// readPair reports whether observer's maps have target: one backend for
// its service, and its pod CIDR routed to it.
func (p *poller) readPair(observer string, t target) (bool, error) {
	m := p.maps[observer]
	v, ok, err := m.services.Lookup(t.frontend)
	if err != nil || !ok || v.Count == 0 {
		return false, err
	}
	r, ok, err := m.ipcache.Lookup(t.cidr)
	if err != nil {
		return false, err
	}
	return ok && r.NodeIP() == t.ip, nil
}

// poll reads every pair once.
func (p *poller) poll(now time.Time) {
	for observer := range p.maps {
		for _, t := range p.targets {
			if t.name == observer {
				continue
			}
			ok, err := p.readPair(observer, t)
			pr := pair{observer, t.name}
			p.mu.Lock()
			if err != nil && p.err == nil {
				p.err = fmt.Errorf("read %s's maps: %w", observer, err)
			}
			if was, seen := p.present[pr]; seen && was && !ok && err == nil {
				p.removals = append(p.removals, removal{pr, now})
			}
			if err == nil {
				p.present[pr] = ok
			}
			p.mu.Unlock()
		}
	}
}

// start polls once (every pair must be present: the lab is synced) and
// then starts the poller's goroutine.
func (p *poller) start() error {
	p.poll(time.Now())
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	for pr, ok := range p.present {
		if !ok {
			return fmt.Errorf("node %s lacks node %s's backend or route before the bench starts", pr.observer, pr.target)
		}
	}
	p.wg.Go(func() {
		t := time.NewTicker(pollInterval)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return
			case now := <-t.C:
				p.poll(now)
			}
		}
	})
	return nil
}

// stop ends the goroutine and closes the maps. It may be called again.
func (p *poller) stop() error {
	select {
	case <-p.done:
		return nil
	default:
		close(p.done)
	}
	p.wg.Wait()
	var errs []error
	for _, m := range p.maps {
		errs = append(errs, m.services.Close(), m.ipcache.Close())
	}
	return errors.Join(errs...)
}

// readErr is the first error the poller met.
func (p *poller) readErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// gone returns, once every other node has removed node since t0, the
// latest of their first removals; ok is false until then.
func (p *poller) gone(node string, t0 time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var last time.Time
	for observer := range p.maps {
		if observer == node {
			continue
		}
		i := slices.IndexFunc(p.removals, func(r removal) bool {
			return r.observer == observer && r.target == node && !r.at.Before(t0)
		})
		if i < 0 {
			return time.Time{}, false
		}
		last = maxTime(last, p.removals[i].at)
	}
	return last, true
}

// whole reports whether every pair is present.
func (p *poller) whole() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ok := range p.present {
		if !ok {
			return false
		}
	}
	return true
}

// window is a stretch of time in which removals of node are expected (a
// crash, until its agent is back).
type window struct {
	node     string
	from, to time.Time
}

// falseRemovals counts the removals outside every window.
func (p *poller) falseRemovals(expected []window) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.removals {
		if !slices.ContainsFunc(expected, func(w window) bool {
			return w.node == r.target && !r.at.Before(w.from) && !r.at.After(w.to)
		}) {
			n++
		}
	}
	return n
}

// describe lists the removals since t0, for progress lines.
func (p *poller) describe(t0 time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, r := range p.removals {
		if !r.at.Before(t0) {
			out = append(out, fmt.Sprintf("%s lost %s at +%s", r.observer, r.target, r.at.Sub(t0).Round(time.Millisecond)))
		}
	}
	return out
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
