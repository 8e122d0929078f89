package bpf

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultDir is where bpffs is mounted unless Config.Dir says otherwise.
const DefaultDir = "/sys/fs/bpf"

// pinSubdir is the directory under the bpffs mount that holds one directory
// of pins per node.
const pinSubdir = "meshplane"

// The names of the agent's maps: each is both the kernel's name for the map
// (what bpftool shows) and its pin's file name. The datapath's C code
// declares its maps with the same names.
const (
	IPCacheMapName   = "mp_ipcache"
	EndpointsMapName = "mp_endpoints"
	PolicyMapName    = "mp_policy"
	ServicesMapName  = "mp_services"
	BackendsMapName  = "mp_backends"
	CIDRMapName      = "mp_cidr"

	// The datapath's own maps (LoadDatapath opens or creates them).
	CTMapName       = "mp_ct"
	FlowsMapName    = "mp_flows"
	CountersMapName = "mp_counters"
)

// The default MaxEntries of the agent's maps.
const (
	DefaultIPCacheMax   = 512 * 1024
	DefaultEndpointsMax = 65536
	DefaultPolicyMax    = 262144
	DefaultServicesMax  = 65536
	DefaultBackendsMax  = 65536
	DefaultCIDRMax      = 65536
	DefaultCTMax        = 262144
	// DefaultFlowRingBytes is the default Config.FlowRingBytes: 1 MiB.
	DefaultFlowRingBytes = 1 << 20
)

// maxFlowRingBytes bounds Config.FlowRingBytes.
const maxFlowRingBytes = 1 << 30

// maxMapEntries bounds the configurable map sizes: far above any real need,
// low enough that a typo does not ask the kernel for gigabytes.
const maxMapEntries = 1 << 24

// Config says where the agent's maps are pinned and how big they are. The
// sizes are part of a pinned map's identity: changing one makes OpenMaps
// fail with ErrIncompatible until the pin is deleted.
type Config struct {
	// Dir is the bpffs mount. Empty means DefaultDir (/sys/fs/bpf).
	Dir string
	// Node is the node's name; it is a path element of the pins, so it may
	// hold only letters, digits, '-', '_' and '.' (as Kubernetes node
	// names do). Required.
	Node string

	// IPCacheMax is the IPCache's maximum number of prefixes. Zero means
	// DefaultIPCacheMax (524288).
	IPCacheMax int
	// EndpointsMax is the Endpoints map's maximum number of local pod IPs.
	// Zero means DefaultEndpointsMax (65536).
	EndpointsMax int
	// PolicyMax is the Policy map's maximum number of entries, over all
	// local endpoints. Zero means DefaultPolicyMax (262144).
	PolicyMax int
	// ServicesMax is the Services map's maximum number of slots: one per
	// service frontend plus one per backend of each. Zero means
	// DefaultServicesMax (65536).
	ServicesMax int
	// BackendsMax is the Backends map's maximum number of backends. Zero
	// means DefaultBackendsMax (65536).
	BackendsMax int
	// CIDRMax is the CIDR map's maximum number of prefixes: the distinct
	// prefixes (cidrs and excepts) of every policy's ipBlocks. Zero means
	// DefaultCIDRMax (65536).
	CIDRMax int

	// CTMax is the datapath's conntrack map's maximum number of entries
	// (see LoadDatapath). It is an LRU hash: when it is full, the least
	// recently used entries make room. Zero means DefaultCTMax (262144).
	CTMax int
	// FlowRingBytes is the size in bytes of the ring buffer that carries
	// the datapath's flow events to the agent: a power of two and a
	// multiple of the page size. Zero means DefaultFlowRingBytes (1 MiB).
	FlowRingBytes int

	// Attach is how Datapath.Attach hooks the programs to pods' host
	// veths: AttachTC (clsact and cls_bpf filters; zero means it) or
	// AttachTCX (pinned tcx links). See AttachMode for why tc is the
	// default. The tunnel device's programs are tcx links in both modes.
	Attach AttachMode

	// SizeNames name the settings that size the maps as an operator sets
	// them (the agent passes its flags, "--bpf-policy-max"), for the
	// ErrMapFull message. An empty name means the Config field
	// ("Config.PolicyMax").
	SizeNames SizeNames
}

// SizeNames name the setting of each map's maximum number of entries.
type SizeNames struct {
	IPCache, Endpoints, Policy, Services, Backends, CIDR string
}

// Validate reports what is wrong with c, if anything.
func (c Config) Validate() error {
	if c.Dir != "" && !filepath.IsAbs(c.Dir) {
		return fmt.Errorf("bpf config: Dir %q is not an absolute path: want the bpffs mount, e.g. %s", c.Dir, DefaultDir)
	}
	if err := checkNode(c.Node); err != nil {
		return fmt.Errorf("bpf config: %w", err)
	}
	for _, s := range []struct {
		name string
		n    int
	}{
		{"IPCacheMax", c.IPCacheMax},
		{"EndpointsMax", c.EndpointsMax},
		{"PolicyMax", c.PolicyMax},
		{"ServicesMax", c.ServicesMax},
		{"BackendsMax", c.BackendsMax},
		{"CIDRMax", c.CIDRMax},
		{"CTMax", c.CTMax},
	} {
		if s.n < 0 || s.n > maxMapEntries {
			return fmt.Errorf("bpf config: %s %d: want 1-%d, or 0 for the default", s.name, s.n, maxMapEntries)
		}
	}
	switch c.Attach {
	case "", AttachTC, AttachTCX:
	default:
		return fmt.Errorf("bpf config: Attach %q: want %q or %q", c.Attach, AttachTC, AttachTCX)
	}
	if n := c.FlowRingBytes; n != 0 {
		page := os.Getpagesize()
		if n < page || n > maxFlowRingBytes || n&(n-1) != 0 {
			return fmt.Errorf("bpf config: FlowRingBytes %d: want a power of two from the page size (%d) to %d, or 0 for the default (%d)",
				n, page, maxFlowRingBytes, DefaultFlowRingBytes)
		}
	}
	return nil
}

// checkNode reports whether node can be a path element of the pins.
func checkNode(node string) error {
	if node == "" {
		return errors.New("empty Node: want the node's name")
	}
	if len(node) > 253 || node == "." || node == ".." {
		return fmt.Errorf("node %q: want a node name of at most 253 characters", node)
	}
	for _, r := range node {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("node %q: character %q: want letters, digits, '-', '_' and '.'", node, r)
		}
	}
	return nil
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	def := func(n *int, d int) {
		if *n == 0 {
			*n = d
		}
	}
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	def(&c.IPCacheMax, DefaultIPCacheMax)
	def(&c.EndpointsMax, DefaultEndpointsMax)
	def(&c.PolicyMax, DefaultPolicyMax)
	def(&c.ServicesMax, DefaultServicesMax)
	def(&c.BackendsMax, DefaultBackendsMax)
	def(&c.CIDRMax, DefaultCIDRMax)
	def(&c.CTMax, DefaultCTMax)
	def(&c.FlowRingBytes, DefaultFlowRingBytes)
	if c.Attach == "" {
		c.Attach = AttachTC
	}
	return c
}

// PinDir returns the directory of the node's pins: <Dir>/meshplane/<Node>.
func (c Config) PinDir() string {
	return filepath.Join(c.withDefaults().Dir, pinSubdir, c.Node)
}

// Maps are the agent's pinned maps: what the datapath reads and the agent
// writes.
type Maps struct {
	// IPCache maps every known IP prefix (pods of every node and cluster,
	// nodes, world CIDRs) to its security identity and hosting node. An
	// LPM trie.
	IPCache *Map[IPCacheKey, IPCacheValue]
	// Endpoints maps each local pod IP to its endpoint. A hash map.
	Endpoints *Map[EndpointKey, EndpointValue]
	// Policy holds the L3/L4 verdicts of the local endpoints. An LPM trie;
	// see PolicyKey for the lookup rule.
	Policy *Map[PolicyKey, PolicyValue]
	// Services maps service frontends to backend slots. A hash map.
	Services *Map[ServiceKey, ServiceValue]
	// Backends maps backend IDs to addresses. A hash map.
	Backends *Map[BackendKey, BackendValue]
	// CIDR maps the prefixes that policies' ipBlocks name, and only those,
	// to their CIDR identities (see CIDRValue). An LPM trie.
	CIDR *Map[IPCacheKey, CIDRValue]
}

// mapDef is how the agent wants one of its maps.
type mapDef struct {
	name  string
	typ   ebpf.MapType
	flags uint32
	max   int
	knob  string // the setting that sizes it, as errors name it
}

// mapDefs returns the definitions of the agent's maps for c (with
// defaults). LPM tries must not be preallocated; the hash maps are, so that
// the datapath's lookups never wait on an allocation and the memory is
// claimed when the agent starts rather than when the node is busy.
func (c Config) mapDefs() (ipcache, endpoints, policy, services, backends, cidr mapDef) {
	knob := func(name, field string) string { return cmp.Or(name, "Config."+field) }
	n := c.SizeNames
	return mapDef{IPCacheMapName, ebpf.LPMTrie, unix.BPF_F_NO_PREALLOC, c.IPCacheMax, knob(n.IPCache, "IPCacheMax")},
		mapDef{EndpointsMapName, ebpf.Hash, 0, c.EndpointsMax, knob(n.Endpoints, "EndpointsMax")},
		mapDef{PolicyMapName, ebpf.LPMTrie, unix.BPF_F_NO_PREALLOC, c.PolicyMax, knob(n.Policy, "PolicyMax")},
		mapDef{ServicesMapName, ebpf.Hash, 0, c.ServicesMax, knob(n.Services, "ServicesMax")},
		mapDef{BackendsMapName, ebpf.Hash, 0, c.BackendsMax, knob(n.Backends, "BackendsMax")},
		mapDef{CIDRMapName, ebpf.LPMTrie, unix.BPF_F_NO_PREALLOC, c.CIDRMax, knob(n.CIDR, "CIDRMax")}
}

// OpenMaps opens the agent's maps pinned in cfg.PinDir(), creating and
// pinning those that are absent (and the directories on the way).
//
// A pinned map is reused as it is, contents and all, so that the datapath
// keeps forwarding across an agent restart; OpenMaps never flushes or
// recreates one. If a pinned map differs from what cfg and this version
// want, OpenMaps fails with an error wrapping ErrIncompatible that names the
// pin and the difference. Without bpffs or the privilege to create maps it
// fails with ErrNotSupported.
func OpenMaps(cfg Config) (*Maps, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open maps: %w", err)
	}
	cfg = cfg.withDefaults()
	if err := CheckSupport(cfg.Dir); err != nil {
		return nil, fmt.Errorf("open maps: %w", err)
	}
	dir := cfg.PinDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open maps: create pin directory: %w", classify(err))
	}

	ipcache, endpoints, policy, services, backends, cidr := cfg.mapDefs()
	ms := &Maps{}
	var err error
	if ms.IPCache, err = openMap[IPCacheKey, IPCacheValue](dir, ipcache); err != nil {
		return nil, errors.Join(err, ms.Close())
	}
	if ms.Endpoints, err = openMap[EndpointKey, EndpointValue](dir, endpoints); err != nil {
		return nil, errors.Join(err, ms.Close())
	}
	if ms.Policy, err = openMap[PolicyKey, PolicyValue](dir, policy); err != nil {
		return nil, errors.Join(err, ms.Close())
	}
	if ms.Services, err = openMap[ServiceKey, ServiceValue](dir, services); err != nil {
		return nil, errors.Join(err, ms.Close())
	}
	if ms.Backends, err = openMap[BackendKey, BackendValue](dir, backends); err != nil {
		return nil, errors.Join(err, ms.Close())
	}
	if ms.CIDR, err = openMap[IPCacheKey, CIDRValue](dir, cidr); err != nil {
		return nil, errors.Join(err, ms.Close())
	}
	return ms, nil
}

// Close closes the maps' file descriptors; the pins and the maps' contents
// stay. It may be called more than once.
func (ms *Maps) Close() error {
	var errs []error
	// Maps that OpenMaps did not get to are nil; a nil *Map must not be
	// called, hence the explicit checks.
	if ms.IPCache != nil {
		errs = append(errs, ms.IPCache.Close())
	}
	if ms.Endpoints != nil {
		errs = append(errs, ms.Endpoints.Close())
	}
	if ms.Policy != nil {
		errs = append(errs, ms.Policy.Close())
	}
	if ms.Services != nil {
		errs = append(errs, ms.Services.Close())
	}
	if ms.Backends != nil {
		errs = append(errs, ms.Backends.Close())
	}
	if ms.CIDR != nil {
		errs = append(errs, ms.CIDR.Close())
	}
	return errors.Join(errs...)
}

// openMap opens the map d pinned in dir, or creates and pins it.
func openMap[K, V comparable](dir string, d mapDef) (*Map[K, V], error) {
	ks, err := layoutSize[K]()
	if err != nil {
		return nil, err
	}
	vs, err := layoutSize[V]()
	if err != nil {
		return nil, err
	}
	em, err := openPinnedSpec(dir, d, uint32(ks), uint32(vs))
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, d.name)
	fullHint := fmt.Sprintf("%s; the larger map replaces the pinned one (%s) only after that pin is deleted on a drained node", d.knob, path)
	return newMap[K, V](em, d.name, path, fullHint)
}

// openPinnedSpec opens the map d, with the given key and value sizes,
// pinned in dir, or creates and pins it; a pinned map that differs fails
// with ErrIncompatible.
func openPinnedSpec(dir string, d mapDef, keySize, valueSize uint32) (*ebpf.Map, error) {
	spec := &ebpf.MapSpec{
		Name:       d.name,
		Type:       d.typ,
		KeySize:    keySize,
		ValueSize:  valueSize,
		MaxEntries: uint32(d.max),
		Flags:      d.flags,
		Pinning:    ebpf.PinByName,
	}
	path := filepath.Join(dir, d.name)
	em, err := ebpf.LoadPinnedMap(path, nil)
	switch {
	case err == nil:
		if err := compatible(em, spec, path, d.knob); err != nil {
			_ = em.Close()
			return nil, err
		}
	case errors.Is(err, os.ErrNotExist):
		// Absent: create and pin it. If another process pins one first,
		// NewMapWithOptions loads that one and checks it against spec.
		em, err = ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: dir})
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("%w: %s was pinned by another process while this one created it: %w",
				ErrIncompatible, path, err)
		}
		if err != nil {
			return nil, fmt.Errorf("create map %s: %w", path, classify(err))
		}
	default:
		return nil, fmt.Errorf("open pinned map %s: %w", path, classify(err))
	}
	return em, nil
}

// compatible reports how the pinned map em differs from spec, as an error
// wrapping ErrIncompatible that says what the operator can do.
func compatible(em *ebpf.Map, spec *ebpf.MapSpec, path, knob string) error {
	if em.Type() != spec.Type || em.KeySize() != spec.KeySize || em.ValueSize() != spec.ValueSize || em.Flags() != spec.Flags {
		return fmt.Errorf("%w: %s is a %s with key size %d, value size %d and flags %#x, but this version uses a %s "+
			"with key size %d, value size %d and flags %#x; after draining the node, delete the pin "+
			"(rm %s) so that the agent creates the map afresh",
			ErrIncompatible, path, em.Type(), em.KeySize(), em.ValueSize(), em.Flags(),
			spec.Type, spec.KeySize, spec.ValueSize, spec.Flags, path)
	}
	if em.MaxEntries() != spec.MaxEntries {
		return fmt.Errorf("%w: %s holds at most %d entries but the configuration asks for %d; set %s back to %d, "+
			"or, after draining the node, delete the pin (rm %s) so that the agent creates the map at the new size",
			ErrIncompatible, path, em.MaxEntries(), spec.MaxEntries, knob, em.MaxEntries(), path)
	}
	return nil
}

// RemovePins deletes the node's pins, cfg.PinDir(): the maps, the
// datapath's maps and its links (links/), which detaches the datapath's
// programs from every veth. Maps that a loaded program or an open file
// descriptor still holds live on until those go; nothing can open them by
// path any more. For tests and for taking a node down for good: the next
// OpenMaps creates new, empty maps.
func RemovePins(cfg Config) error {
	if err := checkNode(cfg.Node); err != nil {
		return fmt.Errorf("remove pins: %w", err)
	}
	if err := os.RemoveAll(cfg.PinDir()); err != nil {
		return fmt.Errorf("remove pins: %w", err)
	}
	return nil
}

// CheckSupport reports, as an error wrapping ErrNotSupported, why this
// process cannot use eBPF maps pinned under dir: dir is not on a bpffs, or
// the kernel refuses to create a small LPM trie (no CAP_BPF, or no LPM
// tries). It returns nil when OpenMaps can work.
func CheckSupport(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("%w: bpffs is not mounted at %s (statfs: %w); mount it with: mount -t bpf bpf %s",
			ErrNotSupported, dir, err, dir)
	}
	if uint32(st.Type) != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%w: %s is not on a bpffs (filesystem magic %#x); mount it with: mount -t bpf bpf %s",
			ErrNotSupported, dir, uint32(st.Type), dir)
	}
	probe, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "mp_probe",
		Type:       ebpf.LPMTrie,
		KeySize:    8,
		ValueSize:  4,
		MaxEntries: 1,
		Flags:      unix.BPF_F_NO_PREALLOC,
	})
	if err != nil {
		return fmt.Errorf("%w: cannot create an LPM trie map (run as root or with CAP_BPF): %w", ErrNotSupported, err)
	}
	_ = probe.Close()
	return nil
}
