package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/meshplane/meshplane/ipam/podip"
	"github.com/meshplane/meshplane/ipcache"
)

// The pod IP journal is not the only record of which pod holds which IP:
// every endpoint has a state file (fsynced at once, while the journal is
// group-committed every 100ms, so a power loss can take journal records
// whose state files survive) and an entry in etcd. An operator may also
// move a corrupt journal away, as its error advises. So the agent never
// trusts the journal alone: on start, after podip.Open and before it
// accepts AddEndpoint, it reserves every IP that any record of this node
// gives a pod (reconcilePodIPs). The rule: an acknowledged allocation is
// never given to anyone else. Conflicts (two records, or a record and the
// journal, give one IP to different pods) are reported, never resolved by
// handing out the IP: it stays allocated, and the conflict stands until
// one pod is left that can hold it.

// Owners that are not pods hold an IP for the agent's own reasons. They
// start with '!', which no Kubernetes namespace does, so they never meet a
// pod's owner ("<namespace>/<pod>").
const (
	// conflictOwner holds an IP in conflict whose claimants cannot hold
	// it themselves (one of them already holds another IP of the family,
	// or the pod that held it was deleted while another still claims it).
	conflictOwner = "!conflict/"
	// etcdOwner holds an IP for an etcd entry of this node that names no
	// pod.
	etcdOwner = "!etcd/"
)

func isPlaceholder(owner string) bool { return strings.HasPrefix(owner, "!") }

// IPConflict is a pod IP that this node's records give to more than one
// pod (or, with a single owner, an IP that a record gives a pod to which
// the journal gives another IP of the family). The IP stays allocated and
// no new pod gets it until all but one of those pods are gone.
type IPConflict struct {
	IP netip.Addr
	// Owners are the pods that claim IP, each with where the claim comes
	// from: "journal" (the allocator held IP for it), "journal gives it
	// <IP>", "state file <path>", "etcd <key>".
	Owners []IPClaim
}

// IPClaim is one pod's claim on an IP in conflict.
type IPClaim struct {
	Owner   string
	Sources []string
}

func (c IPConflict) String() string {
	parts := make([]string, len(c.Owners))
	for i, o := range c.Owners {
		parts[i] = fmt.Sprintf("%s (%s)", o.Owner, strings.Join(o.Sources, ", "))
	}
	return fmt.Sprintf("pod IP %s is claimed by %s: it stays allocated and no new pod gets it; delete the pods that must not have it",
		c.IP, strings.Join(parts, " and "))
}

// podIPState is what the reconcile found, kept up to date as pods go.
type podIPState struct {
	mu sync.Mutex
	// conflicts are the IPs in conflict, by IP; mu guards.
	conflicts map[netip.Addr]*ipConflict
	// unreferenced are allocations that no state file or etcd entry
	// references: from a CNI ADD that crashed before its state file was
	// written, or whose records a power loss took. They stay allocated
	// (the pod may exist, and its ADD may be retried: it gets the same
	// IP); releasing them is CNI garbage collection's job. By owner; mu
	// guards.
	unreferenced map[string][]netip.Addr
	// etcdOnly are IPs this node's etcd entries give a pod besides those
	// of its state file, if any: a DEL of the pod deletes those entries
	// too (forgetPod). By owner; mu guards.
	etcdOnly map[string][]netip.Addr
}

// ipConflict is an IP in conflict.
type ipConflict struct {
	addr netip.Addr
	// holder is the owner the allocator holds addr for: a claimant, a pod
	// only the journal knows, or a conflictOwner placeholder.
	holder string
	// claims are the owners whose records (state files, etcd) claim addr,
	// with their sources; journal-only parties are in journal.
	claims  map[string][]string
	journal map[string]string // owner -> what the journal says of it
}

func (c *ipConflict) public() IPConflict {
	out := IPConflict{IP: c.addr}
	owners := slices.Sorted(maps.Keys(c.journal))
	for o := range c.claims {
		if _, ok := c.journal[o]; !ok {
			owners = append(owners, o)
		}
	}
	slices.Sort(owners)
	for _, o := range owners {
		var src []string
		if j, ok := c.journal[o]; ok {
			src = append(src, j)
		}
		src = append(src, c.claims[o]...)
		out.Owners = append(out.Owners, IPClaim{Owner: o, Sources: src})
	}
	return out
}

// placeholder is the owner that holds c's IP for none of its pods.
func (c *ipConflict) placeholder() string { return conflictOwner + c.addr.String() }

// holdForNone makes the placeholder hold c's IP.
func (c *ipConflict) holdForNone(ips *podip.Allocator) error {
	if err := ips.Reserve(c.placeholder(), c.addr); err != nil {
		return err
	}
	c.holder = c.placeholder()
	return nil
}

// journalGives is a claim's source when the journal gives its pod another
// IP of the family.
func journalGives(held netip.Addr) string { return "journal gives it " + held.String() }

// ipRecord is one record's claim: owner holds addr, says source.
type ipRecord struct {
	addr   netip.Addr
	owner  string
	source string
}

// openPodIPs opens the pod IP allocator and reconciles it with the
// endpoint state files and this node's etcd entries; only then may the
// API hand out IPs. The endpoints cache must be running: its first list
// is this node's entries.
func (a *Agent) openPodIPs(ctx context.Context, cidrs []netip.Prefix) (*podip.Allocator, error) {
	ips, err := podip.Open(podip.Config{Dir: filepath.Join(a.cfg.StateDir, "ipam")}, cidrs)
	if err != nil {
		return nil, fmt.Errorf("pod IPs: %w", err)
	}
	epC := a.epC.Load()
	if err := epC.WaitSynced(ctx); err != nil {
		_ = ips.Close() // nothing was changed
		return nil, err
	}
	var records []ipRecord
	for _, ep := range a.eps.list() {
		for _, ip := range ep.IPs {
			records = append(records, ipRecord{addr: ip, owner: ep.owner(), source: "state file " + a.eps.path(ep.owner())})
		}
	}
	var fromEtcd []ipRecord
	inStateFile := make(map[ipRecord]bool)
	for _, r := range records {
		inStateFile[ipRecord{addr: r.addr, owner: r.owner}] = true
	}
	etcdOnly := make(map[string][]netip.Addr)
	epC.Range(func(key string, e ipcache.Entry) bool {
		if e.Node != a.cfg.Node {
			return true
		}
		owner := e.Namespace + "/" + e.Pod
		if e.Namespace == "" || e.Pod == "" {
			owner = etcdOwner + e.IP.String()
		}
		fromEtcd = append(fromEtcd, ipRecord{addr: e.IP, owner: owner, source: "etcd " + a.keys.Endpoint(key)})
		if !inStateFile[ipRecord{addr: e.IP, owner: owner}] {
			etcdOnly[owner] = append(etcdOnly[owner], e.IP)
		}
		return true
	})
	// State files first: they are what the agent restores its pods from.
	slices.SortFunc(fromEtcd, func(x, y ipRecord) int { return x.addr.Compare(y.addr) })
	records = append(records, fromEtcd...)
	if err := a.reconcilePodIPs(ips, records); err != nil {
		return nil, errors.Join(fmt.Errorf("reconcile pod IPs with the endpoint state files and etcd: %w", err), ips.Close())
	}
	a.podIPs.mu.Lock()
	a.podIPs.etcdOnly = etcdOnly
	a.podIPs.mu.Unlock()
	return ips, nil
}

// reconcilePodIPs reserves every IP the records give a pod, and notes
// conflicts and allocations no record references.
func (a *Agent) reconcilePodIPs(ips *podip.Allocator, records []ipRecord) error {
	before := make(map[netip.Addr]string)
	for _, al := range ips.Allocations() {
		before[al.Addr] = al.Owner
	}
	// Group the records by IP and owner, in the order given.
	var addrs []netip.Addr
	type claim struct {
		owner   string
		sources []string
	}
	byAddr := make(map[netip.Addr][]*claim)
	for _, r := range records {
		cs := byAddr[r.addr]
		if cs == nil {
			addrs = append(addrs, r.addr)
		}
		i := slices.IndexFunc(cs, func(c *claim) bool { return c.owner == r.owner })
		if i < 0 {
			cs = append(cs, &claim{owner: r.owner})
			byAddr[r.addr] = cs
			i = len(cs) - 1
		}
		cs[i].sources = append(cs[i].sources, r.source)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)

	st := &a.podIPs
	st.mu.Lock()
	defer st.mu.Unlock()
	st.conflicts = make(map[netip.Addr]*ipConflict)
	st.unreferenced = make(map[string][]netip.Addr)
	reserved := 0
	for _, addr := range addrs {
		cs := byAddr[addr]
		c := &ipConflict{addr: addr, claims: make(map[string][]string), journal: make(map[string]string)}
		conflict := false
		for _, cl := range cs {
			c.claims[cl.owner] = cl.sources
			err := ips.Reserve(cl.owner, addr)
			var ce *podip.ConflictError
			switch {
			case err == nil:
				c.holder = cl.owner
				if before[addr] != cl.owner {
					reserved++
				}
			case errors.As(err, &ce) && ce.Holder != cl.owner && isPlaceholder(ce.Holder) && len(cs) == 1:
				// A conflict of an earlier run of which one claimant is
				// left: the IP goes to it, unless it holds another.
				if err := ips.Release(ce.Holder); err != nil {
					return err
				}
				err := ips.Reserve(cl.owner, addr)
				switch {
				case err == nil:
					c.holder = cl.owner
				case errors.As(err, &ce):
					if err := c.holdForNone(ips); err != nil {
						return err
					}
					conflict = true
					c.journal[cl.owner] = journalGives(ce.Held)
				default:
					return err
				}
			case errors.As(err, &ce) && ce.Holder != cl.owner:
				c.holder, conflict = ce.Holder, true
			case errors.As(err, &ce):
				// cl.owner holds another IP of the family, and addr is
				// nobody's: hold it for none of them.
				conflict = true
				c.journal[cl.owner] = journalGives(ce.Held)
				if c.holder == "" {
					if err := c.holdForNone(ips); err != nil {
						return err
					}
				}
			default:
				return err
			}
		}
		if !conflict {
			continue
		}
		if before[addr] != "" && !isPlaceholder(before[addr]) {
			if _, ok := c.journal[before[addr]]; !ok {
				c.journal[before[addr]] = "journal"
			}
		}
		st.conflicts[addr] = c
		a.log.Error("pod IP conflict: the IP stays allocated and no new pod gets it; delete the pods that must not have it",
			"ip", addr, "claims", c.public().String())
	}
	// What no record references: placeholders are the agent's own and go;
	// pods' allocations stay.
	for _, al := range ips.Allocations() {
		if _, ok := byAddr[al.Addr]; ok {
			continue
		}
		if isPlaceholder(al.Owner) {
			if err := ips.Release(al.Owner); err != nil {
				return err
			}
			continue
		}
		st.unreferenced[al.Owner] = append(st.unreferenced[al.Owner], al.Addr)
	}
	if n := len(st.unreferenced); n > 0 {
		a.log.Warn("pod IPs allocated to pods this node has no state file or etcd entry for; they stay allocated until CNI garbage collection releases them",
			"owners", n, "example", slices.Min(slices.Collect(maps.Keys(st.unreferenced))))
	}
	if reserved > 0 {
		a.log.Warn("pod IPs the journal did not have were recovered from the endpoint state files and etcd (records lost to a power loss, or the journal moved away)",
			"recovered", reserved)
	}
	return nil
}

// releasePodIPs releases owner's IPs (DeleteEndpoint, or an AddEndpoint
// undone), keeping held every IP in conflict that another pod still
// claims. It is called with the endpoints' lock held, so no allocation
// interleaves with the moves of an IP between owners it may make.
func (a *Agent) releasePodIPs(ips *podip.Allocator, owner string) error {
	st := &a.podIPs
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.unreferenced, owner)
	if err := ips.Release(owner); err != nil {
		return err
	}
	var errs []error
	for _, addr := range slices.SortedFunc(maps.Keys(st.conflicts), netip.Addr.Compare) {
		c := st.conflicts[addr]
		_, claimed := c.claims[owner]
		_, journaled := c.journal[owner]
		if !claimed && !journaled && c.holder != owner {
			continue
		}
		delete(c.claims, owner)
		delete(c.journal, owner)
		if c.holder == owner {
			c.holder = "" // released just now
		}
		resolved, err := st.settleLocked(ips, c)
		if err != nil {
			errs = append(errs, err)
		}
		if resolved {
			delete(st.conflicts, addr)
		}
	}
	return errors.Join(errs...)
}

// settleLocked re-decides who holds an IP in conflict after one of its
// pods let go, and reports whether the conflict is over: when no record
// claims the IP any more (a pod only the journal knows keeps it), or when
// one pod is left that can hold it. While two pods or more are left, the
// IP stays held, by a placeholder if its holder just released it.
func (st *podIPState) settleLocked(ips *podip.Allocator, c *ipConflict) (bool, error) {
	if len(c.claims) == 0 {
		if isPlaceholder(c.holder) {
			if err := ips.Release(c.holder); err != nil {
				return false, err
			}
		} else if c.holder != "" {
			st.unreferenced[c.holder] = append(st.unreferenced[c.holder], c.addr)
		}
		return true, nil
	}
	parties := maps.Clone(c.claims)
	for o := range c.journal {
		parties[o] = nil
	}
	if len(parties) > 1 {
		if c.holder == "" {
			if err := c.holdForNone(ips); err != nil {
				return false, err
			}
		}
		return false, nil
	}
	// One pod left: it gets the IP, unless it holds another of the family.
	var p string
	for o := range parties {
		p = o
	}
	if c.holder == p {
		return true, nil
	}
	if c.holder == c.placeholder() {
		if err := ips.Release(c.holder); err != nil {
			return false, err
		}
		c.holder = ""
	}
	err := ips.Reserve(p, c.addr)
	var ce *podip.ConflictError
	switch {
	case err == nil:
		c.holder = p
		return true, nil
	case errors.As(err, &ce) && ce.Holder == p:
		c.journal[p] = journalGives(ce.Held)
		if err := c.holdForNone(ips); err != nil {
			return false, err
		}
		return false, nil
	default:
		// Keep it held whatever failed.
		_ = c.holdForNone(ips)
		return false, err
	}
}

// forgetPod is the end of a DEL of owner: the etcd entries that name the
// pod at IPs its state file does not list (records that disagreed on
// start) go too; its IPs, those of its endpoint and those of an ADD that
// crashed before its state file was written, are released by releaseIPs.
// It runs under the endpoints' lock, so no ADD of the same pod
// interleaves.
func (a *Agent) forgetPod(ctx context.Context, owner string) error {
	st := &a.podIPs
	st.mu.Lock()
	extra := st.etcdOnly[owner]
	delete(st.etcdOnly, owner)
	st.mu.Unlock()
	var errs []error
	for _, ip := range extra {
		// Only while the entry still names the pod.
		if e, ok := a.epC.Load().Get(ipcache.KeyOf(ip)); ok && e.Node == a.cfg.Node && e.Namespace+"/"+e.Pod == owner {
			errs = append(errs, a.unpublish(ctx, ip))
		}
	}
	return errors.Join(errs...)
}

// beforeAllocate is called before a new endpoint's owner is given IPs. An
// owner that holds an IP in conflict without a state file (only the
// journal knows it) would get that IP back and share it: it lets go of
// what it holds first and gets fresh IPs.
func (a *Agent) beforeAllocate(ips *podip.Allocator, owner string) error {
	st := &a.podIPs
	st.mu.Lock()
	holds := false
	for _, c := range st.conflicts {
		holds = holds || c.holder == owner
	}
	delete(st.unreferenced, owner) // referenced from now on
	st.mu.Unlock()
	if !holds {
		return nil
	}
	return a.releasePodIPs(ips, owner)
}

// problems returns the conflicts, sorted by IP, and the number of
// allocations no record references.
func (st *podIPState) problems() ([]IPConflict, int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]IPConflict, 0, len(st.conflicts))
	for _, c := range st.conflicts {
		out = append(out, c.public())
	}
	slices.SortFunc(out, func(x, y IPConflict) int { return x.IP.Compare(y.IP) })
	n := 0
	for _, addrs := range st.unreferenced {
		n += len(addrs)
	}
	return out, n
}

// maxConflictReasons caps the conflicts named in Status's reasons; all of
// them are in Status.IPAM.Conflicts.
const maxConflictReasons = 10

func conflictReasons(cs []IPConflict) []string {
	var out []string
	for i, c := range cs {
		if i == maxConflictReasons {
			out = append(out, fmt.Sprintf("%d more pod IP conflicts (meshctl status -o json lists them)", len(cs)-i))
			break
		}
		out = append(out, c.String())
	}
	return out
}
