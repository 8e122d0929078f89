package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/identity"
	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
	"github.com/meshplane/meshplane/ipcache"
	"github.com/meshplane/meshplane/labels"
	"github.com/meshplane/meshplane/pod"
	"github.com/meshplane/meshplane/policy"
)

// ErrNotReady is returned by AddEndpoint and DeleteEndpoint (and wrapped
// by what they need) until the agent has reached etcd and holds every pod
// IP its records give its pods: the caller (the CNI plugin) retries.
var ErrNotReady = errors.New("the agent is still starting: it has not reached etcd or restored its pods yet; retry")

// ErrInvalidEndpoint is wrapped by AddEndpoint's input errors.
var ErrInvalidEndpoint = errors.New("invalid endpoint")

// ErrEndpointExists is wrapped when AddEndpoint is repeated for a pod the
// agent has, with another interface, or with other labels or ports while
// those still come from the first request (no pod metadata in etcd yet):
// an endpoint keeps its interface while it lives, and its labels change
// through the pod's metadata (a relabel), not through the CNI.
var ErrEndpointExists = errors.New("endpoint exists")

// ErrNoMetadata is wrapped when AddEndpoint, asked for a pod without
// labels, finds no metadata for it in etcd (pods/<node>/<ns>/<name> and
// namespaces/<ns>) within Config.PodMetadataWait: the control plane has not
// published the pod yet (or is not running). The caller retries.
var ErrNoMetadata = errors.New("no pod metadata in etcd")

// EndpointSpec is what the CNI plugin asks for: a pod to give addresses
// and an identity, and to install in the datapath.
type EndpointSpec struct {
	Namespace   string            `json:"namespace"`
	Pod         string            `json:"pod"`
	ContainerID string            `json:"containerID,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Netns       string            `json:"netns,omitempty"`
	// IfName is the pod side's interface name (CNI_IFNAME): with
	// ContainerID, the endpoint's CNI attachment, which CNI GC matches.
	IfName string `json:"ifName,omitempty"`
	// IfIndex is the host side of the pod's veth.
	IfIndex uint32 `json:"ifIndex,omitempty"`
	// MAC is the pod side's address; NodeMAC the host side's.
	MAC     string `json:"mac,omitempty"`
	NodeMAC string `json:"nodeMAC,omitempty"`
	// NamespaceLabels are the labels of the pod's namespace (identity
	// labels, for namespaceSelector).
	NamespaceLabels map[string]string `json:"namespaceLabels,omitempty"`
	// Ports are the pod's container ports (named ones resolve named ports
	// in policies).
	Ports []ContainerPort `json:"ports,omitempty"`
}

// ContainerPort is a port a pod's container declares: the type of the
// pod metadata in etcd (pod.Port), so ports from there need no copy.
type ContainerPort = pod.Port

// namedPorts are the ports with a name, as the ipcache publishes them.
func (s EndpointSpec) namedPorts() []ipcache.NamedPort {
	var out []ipcache.NamedPort
	for _, p := range s.Ports {
		if p.Name != "" {
			out = append(out, ipcache.NamedPort{Name: p.Name, Port: p.Port, Protocol: p.Protocol})
		}
	}
	return out
}

// ipcacheEntry is what the node publishes for the pod's ip with identity
// id (the node fills in itself).
func (s EndpointSpec) ipcacheEntry(ip netip.Addr, id identity.ID) ipcache.Entry {
	return ipcache.Entry{IP: ip, Identity: id, Namespace: s.Namespace, Pod: s.Pod, Ports: s.namedPorts()}
}

// Endpoint is a local pod as the agent keeps it: the spec plus what it
// was given. It is stored in StateDir/endpoints/<namespace>_<pod>.json, so
// a restarted agent knows its pods without etcd.
type Endpoint struct {
	EndpointSpec
	ID       uint32         `json:"id"`
	IPs      []netip.Addr   `json:"ips"`
	Identity identity.ID    `json:"identity"`
	Gateways []netip.Addr   `json:"gateways,omitempty"`
	CIDRs    []netip.Prefix `json:"cidrs,omitempty"`
	// PodMetadata is true once Labels and Ports come from the pod's
	// metadata in etcd (pods/<node>/<namespace>/<name>), NamespaceMetadata
	// once NamespaceLabels come from namespaces/<namespace>; until then
	// they are what the AddEndpoint request carried. Metadata, once there,
	// is the truth: its changes relabel the endpoint (relabel.go), and a
	// repeated AddEndpoint's labels are no longer compared.
	PodMetadata       bool `json:"podMetadata,omitempty"`
	NamespaceMetadata bool `json:"namespaceMetadata,omitempty"`
	// Superseded are the label sets (labels.Set strings) of identities the
	// endpoint held before a relabel, whose etcd references may outlive
	// a crash: the allocator deletes a released reference in a later
	// batch. A restart takes and releases each once (restore), which
	// deletes a leftover reference, and clears the list.
	Superseded []string `json:"superseded,omitempty"`
}

// maxSuperseded bounds Endpoint.Superseded; an older leftover reference
// than that only keeps its identity from identity GC until the lease ends.
const maxSuperseded = 8

// owner is the endpoint's key in the pod IP allocator and its file name.
func (s EndpointSpec) owner() string { return s.Namespace + "/" + s.Pod }

var (
	k8sNameRE  = regexp.MustCompile(`^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$`)
	portNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$`)
)

func (s EndpointSpec) validate() error {
	if !k8sNameRE.MatchString(s.Namespace) || strings.Contains(s.Namespace, ".") {
		return fmt.Errorf("%w: namespace %q: use a DNS label", ErrInvalidEndpoint, s.Namespace)
	}
	if !k8sNameRE.MatchString(s.Pod) {
		return fmt.Errorf("%w: pod name %q: use a DNS subdomain", ErrInvalidEndpoint, s.Pod)
	}
	seen := make(map[string]bool)
	for _, p := range s.Ports {
		switch {
		case p.Port == 0:
			return fmt.Errorf("%w: port 0 of %s: use 1-65535", ErrInvalidEndpoint, s.owner())
		case p.Protocol != bpf.ProtoTCP && p.Protocol != bpf.ProtoUDP && p.Protocol != bpf.ProtoSCTP:
			return fmt.Errorf("%w: port %d of %s: protocol %d: use TCP, UDP or SCTP", ErrInvalidEndpoint, p.Port, s.owner(), p.Protocol)
		case p.Name != "" && !portNameRE.MatchString(p.Name):
			return fmt.Errorf("%w: port name %q of %s: use at most 15 lowercase letters, digits and '-', with a letter", ErrInvalidEndpoint, p.Name, s.owner())
		case p.Name != "" && seen[p.Name]:
			return fmt.Errorf("%w: port name %q of %s is used twice", ErrInvalidEndpoint, p.Name, s.owner())
		}
		seen[p.Name] = p.Name != ""
	}
	for _, m := range []string{s.MAC, s.NodeMAC} {
		if m == "" {
			continue
		}
		if hw, err := net.ParseMAC(m); err != nil || len(hw) != 6 {
			return fmt.Errorf("%w: MAC %q of %s: use six colon-separated hex bytes", ErrInvalidEndpoint, m, s.owner())
		}
	}
	return nil
}

// validateNew checks what a new endpoint must satisfy beyond validate
// (which also checks the state files of endpoints made by older
// versions, so it stays as lenient as they were).
func (s EndpointSpec) validateNew() error {
	for _, m := range []struct{ what, mac string }{{"MAC", s.MAC}, {"node MAC", s.NodeMAC}} {
		hw, err := net.ParseMAC(m.mac)
		switch {
		case m.mac == "" || err != nil:
		case hw[0]&1 != 0:
			return fmt.Errorf("%w: %s %q of %s is a multicast address: pass the unicast address of the veth's end", ErrInvalidEndpoint, m.what, m.mac, s.owner())
		case slices.Equal(hw, make(net.HardwareAddr, len(hw))):
			return fmt.Errorf("%w: %s %q of %s is all zeros: pass the address of the veth's end", ErrInvalidEndpoint, m.what, m.mac, s.owner())
		}
	}
	if s.Netns != "" && !filepath.IsAbs(s.Netns) {
		return fmt.Errorf("%w: netns %q of %s: not an absolute path: pass the pod's network namespace file (e.g. /var/run/netns/cni-...)", ErrInvalidEndpoint, s.Netns, s.owner())
	}
	return nil
}

// carriesLabels reports whether a request carries labels: one without
// (the CNI plugin's) takes them from the pod's metadata in etcd.
func (s EndpointSpec) carriesLabels() bool {
	return len(s.Labels) > 0 || len(s.NamespaceLabels) > 0
}

// differences names the fields in which a repeated request o differs from
// the endpoint, in the words of the API. Labels and ports are compared
// only while they still come from the first request: a request without
// labels takes them from etcd, and etcd's, once there, win over any
// request's.
func (ep *Endpoint) differences(o EndpointSpec) []string {
	s := ep.EndpointSpec
	requested := o.carriesLabels() || len(o.Ports) > 0
	var out []string
	add := func(differ bool, what string) {
		if differ {
			out = append(out, what)
		}
	}
	sameMAC := func(a, b string) bool {
		ha, erra := net.ParseMAC(a)
		hb, errb := net.ParseMAC(b)
		if erra != nil || errb != nil {
			return a == b
		}
		return slices.Equal(ha, hb)
	}
	add(requested && !ep.PodMetadata && !maps.Equal(s.Labels, o.Labels), "labels")
	add(requested && !ep.NamespaceMetadata && !maps.Equal(s.NamespaceLabels, o.NamespaceLabels), "namespace labels")
	add(requested && !ep.PodMetadata && !slices.Equal(s.Ports, o.Ports), "ports")
	add(s.ContainerID != o.ContainerID, "container ID")
	add(s.Netns != o.Netns, "netns")
	add(s.IfName != o.IfName, "interface name")
	add(s.IfIndex != o.IfIndex, "ifindex")
	add(!sameMAC(s.MAC, o.MAC), "MAC")
	add(!sameMAC(s.NodeMAC, o.NodeMAC), "node MAC")
	return out
}

// joinWords joins "a", "a and b", "a, b and c".
func joinWords(ws []string) string {
	if len(ws) < 2 {
		return strings.Join(ws, "")
	}
	return strings.Join(ws[:len(ws)-1], ", ") + " and " + ws[len(ws)-1]
}

// labelSet is the pod's identity label set: its labels, its namespace,
// its namespace's labels and its cluster, as policy.PodLabels forms them
// (the selectors of policies match exactly these).
func (s EndpointSpec) labelSet(cluster string, filter *labels.Filter) (labels.Set, error) {
	set, err := labels.NewSet(policy.PodLabels(cluster, s.Namespace, s.Labels, s.NamespaceLabels)...)
	if err != nil {
		return labels.Set{}, fmt.Errorf("%w: labels of %s: %w", ErrInvalidEndpoint, s.owner(), err)
	}
	if filter != nil {
		set = filter.Apply(set)
	}
	return set, nil
}

// endpoints is the node's local endpoints: the pod IP allocator, the
// identity allocator's references, the endpoints map's desired state, the
// ipcache entries the node owns in etcd, and the state files.
//
// Two locks: owners serialises the steps of one pod (add, remove, restore
// and relabel of an owner run one at a time, and each sees what the one
// before did), so different pods are added and deleted in parallel; mu
// guards the tables below and the Endpoint values in byKey, and is held
// only briefly, never across etcd, file or netlink I/O. An Endpoint in
// byKey is written only with its owner's lock and mu held, so the holder
// of the owner's lock reads it without mu.
type endpoints struct {
	dir     string
	cluster string
	filter  *labels.Filter
	hooks   endpointHooks
	owners  ownerLocks

	mu    sync.Mutex
	byKey map[string]*Endpoint // mu guards: by owner
	// unsettled is the relabelled endpoints (mu guards) whose ipcache
	// entries are not all published with the new identity yet, and the
	// label sets of the identities they still hold from before, which
	// are released once the entries are published (relabel.go).
	unsettled map[string][]labels.Set
	// referenced is the endpoints whose identity reference this run of
	// the agent holds (mu guards): taken by add, or by restore for an
	// endpoint loaded from its state file. Only those are released by
	// remove, so a DEL that comes before the restore releases nothing it
	// does not hold, and the restore skips an endpoint already gone.
	referenced map[string]bool
	ids        *idAllocator[string] // mu guards
}

// ownerLocks is a mutex per owner, made at its first use and dropped when
// nobody holds it or waits for it.
type ownerLocks struct {
	mu sync.Mutex
	m  map[string]*ownerLock
}

type ownerLock struct {
	sync.Mutex
	users int // holders and waiters (ownerLocks.mu guards)
}

// lock locks owner's mutex; the returned function unlocks it.
func (o *ownerLocks) lock(owner string) (unlock func()) {
	o.mu.Lock()
	l := o.m[owner]
	if l == nil {
		if o.m == nil {
			o.m = make(map[string]*ownerLock)
		}
		l = &ownerLock{}
		o.m[owner] = l
	}
	l.users++
	o.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		o.mu.Lock()
		if l.users--; l.users == 0 {
			delete(o.m, owner)
		}
		o.mu.Unlock()
	}
}

// endpointHooks put a local endpoint into the datapath (the endpoints
// map, its policy, its programs) and take it out. They are called with
// the endpoint's owner lock held (not endpoints.mu), so one pod's steps
// stay in order; they are safe for concurrent use by different pods.
type endpointHooks interface {
	// check reports what the node says against a new endpoint (an
	// interface that does not exist), as an ErrInvalidEndpoint error.
	check(spec EndpointSpec) error
	installed(ep *Endpoint, set labels.Set)
	// relabelled installs an installed endpoint again with new labels,
	// ports or identity (its interface is the same).
	relabelled(ep *Endpoint, set labels.Set)
	removed(ep *Endpoint)
}

func newEndpoints(dir, cluster string, filter *labels.Filter, hooks endpointHooks) *endpoints {
	return &endpoints{
		dir: dir, cluster: cluster, filter: filter, hooks: hooks,
		byKey: make(map[string]*Endpoint), referenced: make(map[string]bool), unsettled: make(map[string][]labels.Set),
		ids: newIDAllocator[string]("endpoint", 65535),
	}
}

// load reads the state files into the table. It needs no etcd: the
// endpoints map is right again before the agent has reached etcd.
func (e *endpoints) load() error {
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return fmt.Errorf("endpoint state: %w", err)
	}
	// Temporary files are what a crash in the middle of a save leaves:
	// the state file they were for is whole, old or new.
	// (filepath's * matches a leading dot too: writeFileAtomic's
	// ".<name>.<random>.tmp" is among them.)
	tmps, _ := filepath.Glob(filepath.Join(e.dir, "*.tmp"))
	for _, f := range tmps {
		_ = os.Remove(f)
	}
	files, err := filepath.Glob(filepath.Join(e.dir, "*.json"))
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("endpoint state: %w", err)
		}
		var ep Endpoint
		err = json.Unmarshal(b, &ep)
		if err == nil {
			err = ep.validate()
		}
		if err == nil && ep.ID == 0 {
			err = errors.New("no endpoint ID")
		}
		if err != nil {
			return fmt.Errorf("endpoint state %s is corrupt (%w): remove it and delete the pod, or restore it", f, err)
		}
		set, err := ep.labelSet(e.cluster, e.filter)
		if err != nil {
			return fmt.Errorf("endpoint state %s: %w", f, err)
		}
		e.ids.seed(ep.owner(), ep.ID)
		e.byKey[ep.owner()] = &ep
		e.hooks.installed(&ep, set)
	}
	// Seeds are references here: every loaded endpoint holds its ID.
	for k := range e.byKey {
		if _, err := e.ids.acquire(k); err != nil {
			return err
		}
	}
	return nil
}

func (e *endpoints) list() []Endpoint {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Endpoint, 0, len(e.byKey))
	for _, ep := range e.byKey {
		out = append(out, *ep)
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return strings.Compare(a.owner(), b.owner()) })
	return out
}

func (e *endpoints) path(owner string) string {
	return filepath.Join(e.dir, strings.ReplaceAll(owner, "/", "_")+".json")
}

// save writes the endpoint's state file atomically.
func (e *endpoints) save(ep *Endpoint) error {
	b, err := json.Marshal(ep)
	if err != nil {
		return err
	}
	err = writeFileAtomicThen(e.path(ep.owner()), b, 0o600, func() { afterStep("add:state-tmp", ep.owner(), netip.Addr{}) })
	if err != nil {
		return fmt.Errorf("endpoint state: %w", err)
	}
	return nil
}

// endpointDeps are what Add and Delete need from the running agent.
type endpointDeps interface {
	allocateIP(owner string, f ipam.Family) (netip.Addr, netip.Prefix, error)
	releaseIPs(owner string) error
	allocateIdentity(ctx context.Context, set labels.Set) (identity.ID, error)
	releaseIdentity(set labels.Set) error
	publish(ctx context.Context, e ipcache.Entry) error
	unpublish(ctx context.Context, ip netip.Addr) error
	// forgetPod deletes the etcd entries that name a deleted pod at IPs
	// its endpoint does not list (reconcile_ips.go).
	forgetPod(ctx context.Context, owner string) error
	families() []ipam.Family
}

// existingLocked returns the endpoint a repeated request asks for, or
// refuses a request that contradicts it; ok is false for a new pod.
func (e *endpoints) existingLocked(spec EndpointSpec) (_ Endpoint, ok bool, _ error) {
	ep, ok := e.byKey[spec.owner()]
	if !ok {
		return Endpoint{}, false, nil
	}
	diff := ep.differences(spec)
	if len(diff) == 0 {
		return *ep, true, nil
	}
	// A relabel comes from the pod's metadata in etcd (relabel.go), not
	// from a repeated CNI ADD, which Kubernetes never sends with other
	// labels: a change here is a caller's mistake, refused, never dropped.
	what := "change the pod's labels through its metadata (kubectl label; in the lab, meshctl lab label), or delete it (CNI DEL) and add it again"
	if slices.ContainsFunc(diff, func(d string) bool { return !strings.Contains(d, "labels") && d != "ports" }) {
		what = "delete it (CNI DEL), then add it again"
	}
	return Endpoint{}, true, fmt.Errorf("%w: %s exists with other %s: an endpoint keeps its interface while it lives, and a repeated add does not relabel it; %s",
		ErrEndpointExists, spec.owner(), joinWords(diff), what)
}

// add creates (or, for a pod it has, returns) an endpoint. A failure
// undoes every step taken, so no half-made endpoint is left behind.
//
// A request without labels (the CNI plugin's) waits, bounded by ctx and
// meta's timeout, for the pod's and its namespace's metadata in etcd and
// takes labels, namespace labels and ports from there. A request with
// labels (the lab's, before its control plane writes metadata) is taken
// as the initial label set, but what etcd has, once there, wins.
func (e *endpoints) add(ctx context.Context, d endpointDeps, meta metadataSource, spec EndpointSpec) (_ Endpoint, err error) {
	if err := spec.validate(); err != nil {
		return Endpoint{}, err
	}
	if err := spec.validateNew(); err != nil {
		return Endpoint{}, err
	}
	// Labels from the request are checked before anything waits.
	if _, err := spec.labelSet(e.cluster, e.filter); err != nil {
		return Endpoint{}, err
	}
	e.mu.Lock()
	ep, ok, err := e.existingLocked(spec)
	e.mu.Unlock()
	if ok || err != nil {
		return ep, err
	}
	if err := meta.wait(ctx, spec.Namespace, spec.Pod, !spec.carriesLabels()); err != nil {
		return Endpoint{}, err
	}
	owner := spec.owner()
	unlock := e.owners.lock(owner)
	defer unlock()
	e.mu.Lock()
	ep, ok, err = e.existingLocked(spec)
	e.mu.Unlock()
	if ok || err != nil {
		return ep, err
	}
	// With the owner's lock, so that a metadata change from now on finds
	// the endpoint (the relabel worker takes the lock too) and one before
	// is read here.
	ep = Endpoint{EndpointSpec: spec}.withMetadata(meta.lookup(spec.Namespace, spec.Pod))
	if err := ep.validate(); err != nil {
		return Endpoint{}, err
	}
	set, err := ep.labelSet(e.cluster, e.filter)
	if err != nil {
		return Endpoint{}, err
	}
	if err := e.hooks.check(spec); err != nil {
		return Endpoint{}, err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	e.mu.Lock()
	id, err := e.ids.acquire(owner)
	e.mu.Unlock()
	if err != nil {
		return Endpoint{}, err
	}
	ep.ID = id
	undo = append(undo, func() {
		e.mu.Lock()
		e.ids.release(owner)
		e.mu.Unlock()
	})
	undo = append(undo, func() { _ = d.releaseIPs(owner) })
	for _, f := range d.families() {
		ip, cidr, err := d.allocateIP(owner, f)
		if err != nil {
			return Endpoint{}, err
		}
		ep.IPs = append(ep.IPs, ip)
		ep.CIDRs = append(ep.CIDRs, cidr)
		ep.Gateways = append(ep.Gateways, podip.Gateway(cidr))
		afterStep("add:ip", owner, ip)
	}
	ep.Identity, err = d.allocateIdentity(ctx, set)
	if err != nil {
		return Endpoint{}, fmt.Errorf("identity for %s: %w", owner, err)
	}
	e.setReferenced(owner, true)
	undo = append(undo, func() {
		e.setReferenced(owner, false)
		_ = d.releaseIdentity(set)
	})
	afterStep("add:identity", owner, netip.Addr{})
	if err := e.save(&ep); err != nil {
		return Endpoint{}, err
	}
	afterStep("add:state", owner, netip.Addr{})
	undo = append(undo, func() { _ = os.Remove(e.path(owner)) })
	for _, ip := range ep.IPs {
		if err := d.publish(ctx, ep.ipcacheEntry(ip, ep.Identity)); err != nil {
			return Endpoint{}, fmt.Errorf("publish %s of %s: %w", ip, owner, err)
		}
		undo = append(undo, func() { _ = d.unpublish(context.WithoutCancel(ctx), ip) })
		afterStep("add:published", owner, ip)
	}
	stored := ep
	e.hooks.installed(&stored, set)
	e.mu.Lock()
	e.byKey[owner] = &stored
	e.mu.Unlock()
	return ep, nil
}

// setReferenced records whether this run holds owner's identity reference.
func (e *endpoints) setReferenced(owner string, held bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if held {
		e.referenced[owner] = true
	} else {
		delete(e.referenced, owner)
	}
}

// lookup returns owner's endpoint (the stored one: its owner's lock is
// needed to read it without mu), whether this run holds its identity
// reference, and the label sets it still holds from before a relabel.
func (e *endpoints) lookup(owner string) (ep *Endpoint, referenced bool, unsettled []labels.Set) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.byKey[owner], e.referenced[owner], e.unsettled[owner]
}

// remove deletes an endpoint; deleting an unknown one is not an error
// (a CNI DEL may be repeated). With a containerID, an endpoint of the pod
// that belongs to another container (a newer sandbox of the same pod) is
// left alone (as is one made without a container ID): the DEL of an old
// attachment never removes a new one.
func (e *endpoints) remove(ctx context.Context, d endpointDeps, namespace, pod, containerID string) error {
	owner := namespace + "/" + pod
	unlock := e.owners.lock(owner)
	defer unlock()
	ep, referenced, unsettled := e.lookup(owner)
	if ep != nil && containerID != "" && ep.ContainerID != containerID {
		return nil
	}
	if ep == nil {
		// No endpoint, but the pod may still hold an IP (an ADD that
		// crashed before its state file) or etcd entries.
		return errors.Join(d.releaseIPs(owner), d.forgetPod(ctx, owner))
	}
	// The datapath first, so no new traffic is classified with the old
	// identity; then etcd; the IPs last (they go into quarantine).
	e.hooks.removed(ep)
	var errs []error
	for _, ip := range ep.IPs {
		if err := d.unpublish(ctx, ip); err != nil {
			errs = append(errs, err)
		}
		afterStep("remove:unpublished", owner, ip)
	}
	if set, err := ep.labelSet(e.cluster, e.filter); err == nil && referenced {
		errs = append(errs, d.releaseIdentity(set))
		afterStep("remove:identity", owner, netip.Addr{})
	}
	// The identities it still held from before a relabel.
	for _, set := range unsettled {
		errs = append(errs, d.releaseIdentity(set))
	}
	e.mu.Lock()
	delete(e.unsettled, owner)
	delete(e.referenced, owner)
	e.mu.Unlock()
	errs = append(errs, d.releaseIPs(owner))
	afterStep("remove:released", owner, netip.Addr{})
	if err := os.Remove(e.path(owner)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	afterStep("remove:state", owner, netip.Addr{})
	errs = append(errs, d.forgetPod(ctx, owner))
	e.mu.Lock()
	delete(e.byKey, owner)
	e.ids.release(owner)
	e.mu.Unlock()
	return errors.Join(errs...)
}

// restoreResult is what restore did for one endpoint.
type restoreResult struct {
	restored bool        // the endpoint was there and had no reference yet
	old, new identity.ID // its identity before and after
}

// restore re-takes, after a restart, what the endpoint of owner holds in
// etcd: its identity reference, and its ipcache entries with that
// identity. Both are on the agent's lease, which a restart normally
// resumes; this covers a lease that expired while the agent was down. An
// identity that changed meanwhile (its ID was garbage-collected and taken
// by other labels) is given to the endpoint in its state file and the
// datapath too. It runs under the owner's lock, like add and remove, so
// that a DEL of the same pod waits for it or comes first (and then there
// is nothing to restore).
func (e *endpoints) restore(ctx context.Context, d endpointDeps, owner string) (restoreResult, error) {
	unlock := e.owners.lock(owner)
	defer unlock()
	ep, referenced, _ := e.lookup(owner)
	if ep == nil || referenced {
		return restoreResult{}, nil
	}
	set, err := ep.labelSet(e.cluster, e.filter)
	if err != nil {
		return restoreResult{}, err
	}
	id, err := d.allocateIdentity(ctx, set)
	if err != nil {
		return restoreResult{}, fmt.Errorf("identity for %s: %w", owner, err)
	}
	e.setReferenced(owner, true)
	res := restoreResult{restored: true, old: ep.Identity, new: id}
	// References to the identities of earlier label sets that a crash may
	// have left in etcd (Endpoint.Superseded): taking and releasing one
	// deletes it, unless another endpoint holds it.
	var errs []error
	for _, s := range ep.Superseded {
		old, err := labels.ParseSet(s)
		if err != nil || old.Equal(set) {
			continue
		}
		if _, err := d.allocateIdentity(ctx, old); err != nil {
			errs = append(errs, fmt.Errorf("release the earlier identity of %s: %w", owner, err))
			continue
		}
		if err := d.releaseIdentity(old); err != nil {
			errs = append(errs, err)
		}
	}
	if changed := id != ep.Identity; changed || (len(ep.Superseded) > 0 && len(errs) == 0) {
		next := *ep
		next.Identity = id
		if len(errs) == 0 {
			next.Superseded = nil
		}
		if err := e.save(&next); err != nil {
			return res, err
		}
		e.mu.Lock()
		*ep = next
		e.mu.Unlock()
		if changed {
			e.hooks.installed(ep, set)
		}
	}
	for _, ip := range ep.IPs {
		if err := d.publish(ctx, ep.ipcacheEntry(ip, id)); err != nil {
			errs = append(errs, fmt.Errorf("publish %s of %s: %w", ip, owner, err))
		}
	}
	return res, errors.Join(errs...)
}
