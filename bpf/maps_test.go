package bpf

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// mapIDs returns the kernel IDs of the six maps.
func mapIDs(t testing.TB, ms *Maps) [6]uint32 {
	t.Helper()
	var ids [6]uint32
	for i, id := range []func() (uint32, error){ms.IPCache.ID, ms.Endpoints.ID, ms.Policy.ID, ms.Services.ID, ms.Backends.ID, ms.CIDR.ID} {
		var err error
		if ids[i], err = id(); err != nil {
			t.Fatalf("ID: %v", err)
		}
	}
	return ids
}

// fill writes one entry into each map.
func fill(t testing.TB, ms *Maps) {
	t.Helper()
	errs := []error{
		ms.IPCache.Put(IPCacheKeyFor(netip.MustParsePrefix("10.1.0.0/24")), IPCacheValueFor(65792, netip.MustParseAddr("192.168.0.2"), 0)),
		ms.Endpoints.Put(EndpointKeyFor(netip.MustParseAddr("fd00::5")), EndpointValue{EndpointID: 5, IfIndex: 9, Identity: 65792}),
		ms.Policy.Put(PolicyLookupKey(5, Ingress, 65793, ProtoTCP, 80), PolicyValue{Verdict: Allow, Cookie: 1}),
		ms.Services.Put(ServiceKeyFor(netip.MustParseAddrPort("10.96.0.10:53"), ProtoUDP, 0), ServiceEntry(3, 1)),
		ms.Backends.Put(BackendKey{ID: 1}, BackendValueFor(netip.MustParseAddrPort("10.1.0.7:53"), ProtoUDP, 0)),
		ms.CIDR.Put(IPCacheKeyFor(netip.MustParsePrefix("198.51.100.0/24")), CIDRValue{Identity: 1<<24 + 1}),
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("fill: %v", err)
	}
}

// counts returns the number of entries of the six maps.
func counts(t testing.TB, ms *Maps) [6]int {
	t.Helper()
	var out [6]int
	for i, count := range []func() (int, error){ms.IPCache.Count, ms.Endpoints.Count, ms.Policy.Count, ms.Services.Count, ms.Backends.Count, ms.CIDR.Count} {
		var err error
		if out[i], err = count(); err != nil {
			t.Fatalf("Count: %v", err)
		}
	}
	return out
}

func TestOpenMapsPinLayout(t *testing.T) {
	cfg := testConfig(t)
	ms := openMaps(t, cfg)
	dir := filepath.Join(DefaultDir, "meshplane", cfg.Node)
	if cfg.PinDir() != dir {
		t.Fatalf("PinDir = %s; want %s", cfg.PinDir(), dir)
	}
	for name, m := range map[string]interface {
		Name() string
		Path() string
		MaxEntries() int
	}{
		IPCacheMapName:   ms.IPCache,
		EndpointsMapName: ms.Endpoints,
		PolicyMapName:    ms.Policy,
		ServicesMapName:  ms.Services,
		BackendsMapName:  ms.Backends,
		CIDRMapName:      ms.CIDR,
	} {
		if m.Name() != name || m.Path() != filepath.Join(dir, name) || m.MaxEntries() != 1024 {
			t.Errorf("%s: Name %s, Path %s, MaxEntries %d", name, m.Name(), m.Path(), m.MaxEntries())
		}
		if _, err := os.Stat(m.Path()); err != nil {
			t.Errorf("%s: pin: %v", name, err)
		}
	}
}

func TestOpenMapsDefaults(t *testing.T) {
	cfg := testConfig(t)
	cfg.IPCacheMax, cfg.EndpointsMax, cfg.PolicyMax, cfg.ServicesMax, cfg.BackendsMax, cfg.CIDRMax = 0, 0, 0, 0, 0, 0
	ms := openMaps(t, cfg)
	for _, c := range []struct {
		m    interface{ MaxEntries() int }
		want int
	}{
		{ms.IPCache, DefaultIPCacheMax},
		{ms.Endpoints, DefaultEndpointsMax},
		{ms.Policy, DefaultPolicyMax},
		{ms.Services, DefaultServicesMax},
		{ms.Backends, DefaultBackendsMax},
		{ms.CIDR, DefaultCIDRMax},
	} {
		if got := c.m.MaxEntries(); got != c.want {
			t.Errorf("MaxEntries = %d; want the default %d", got, c.want)
		}
	}
}

// TestReopen is the agent restart: the second OpenMaps gets the same kernel
// maps with their contents, never fresh ones.
func TestReopen(t *testing.T) {
	cfg := testConfig(t)
	first, err := OpenMaps(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, first)
	ids := mapIDs(t, first)
	want := counts(t, first)

	// Opened again while the first is open (two agents by mistake) ...
	second := openMaps(t, cfg)
	if got := mapIDs(t, second); got != ids {
		t.Fatalf("map IDs of a second OpenMaps = %v; want %v", got, ids)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	// ... and after the first is gone (a restart).
	third := openMaps(t, cfg)
	if got := mapIDs(t, third); got != ids {
		t.Fatalf("map IDs after a restart = %v; want %v", got, ids)
	}
	if got := counts(t, third); got != want || want != [6]int{1, 1, 1, 1, 1, 1} {
		t.Fatalf("entries after a restart = %v; want %v", got, want)
	}
	v, ok, err := third.IPCache.Lookup(IPCacheLookupKey(netip.MustParseAddr("10.1.0.9")))
	if err != nil || !ok || v.Identity != 65792 || v.NodeIP() != netip.MustParseAddr("192.168.0.2") {
		t.Fatalf("IPCache after a restart: %v, %v, %v", v, ok, err)
	}
}

func TestOpenMapsIncompatible(t *testing.T) {
	cfg := testConfig(t)
	ms := openMaps(t, cfg)
	fill(t, ms)
	ids := mapIDs(t, ms)

	bigger := cfg
	bigger.PolicyMax = 2048
	_, err := OpenMaps(bigger)
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("OpenMaps with another PolicyMax = %v; want ErrIncompatible", err)
	}
	for _, want := range []string{ms.Policy.Path(), "rm " + ms.Policy.Path(), "PolicyMax back to 1024", "1024", "2048"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	// A map of another layout pinned where the IPCache belongs (an older
	// version's, say) is refused the same way.
	other := testConfig(t)
	dir := other.PinDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: IPCacheMapName, Type: ebpf.Hash, KeySize: 20, ValueSize: 28, MaxEntries: 1024, Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	_ = old.Close()
	_, err = OpenMaps(other)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), filepath.Join(dir, IPCacheMapName)) ||
		!strings.Contains(err.Error(), "key size 20") {
		t.Fatalf("OpenMaps over a pin of another layout = %v; want ErrIncompatible naming the pin and the sizes", err)
	}

	// The refusals changed nothing.
	again := openMaps(t, cfg)
	if got := mapIDs(t, again); got != ids {
		t.Fatalf("map IDs after refused opens = %v; want %v", got, ids)
	}
	if got := counts(t, again); got != [6]int{1, 1, 1, 1, 1, 1} {
		t.Fatalf("entries after refused opens = %v", got)
	}
}

func TestOpenPinned(t *testing.T) {
	cfg := testConfig(t)
	ms := openMaps(t, cfg)
	fill(t, ms)

	m, err := OpenPinned[IPCacheKey, IPCacheValue](ms.IPCache.Path())
	if err != nil {
		t.Fatalf("OpenPinned: %v", err)
	}
	defer m.Close()
	if m.Name() != IPCacheMapName || m.Path() != ms.IPCache.Path() || m.MaxEntries() != 1024 {
		t.Errorf("OpenPinned: Name %s Path %s MaxEntries %d", m.Name(), m.Path(), m.MaxEntries())
	}
	if n, err := m.Count(); err != nil || n != 1 {
		t.Errorf("Count = %d, %v; want 1", n, err)
	}

	_, err = OpenPinned[IPCacheKey, EndpointValue](ms.IPCache.Path())
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "value size 24") || !strings.Contains(err.Error(), "needs 28") {
		t.Errorf("OpenPinned with the wrong value type = %v; want ErrIncompatible naming both sizes", err)
	}
	_, err = OpenPinned[EndpointKey, IPCacheValue](ms.IPCache.Path())
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "key size 24") {
		t.Errorf("OpenPinned with the wrong key type = %v; want ErrIncompatible", err)
	}
	type padded struct {
		A uint8
		B uint32
	}
	_, err = OpenPinned[padded, IPCacheValue](ms.IPCache.Path())
	if err == nil || !strings.Contains(err.Error(), "padding") {
		t.Errorf("OpenPinned with a padded key type = %v; want an error about padding", err)
	}
	_, err = OpenPinned[IPCacheKey, IPCacheValue](filepath.Join(cfg.PinDir(), "nonexistent"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenPinned of a missing pin = %v; want os.ErrNotExist", err)
	}
}

func TestRemovePins(t *testing.T) {
	cfg := testConfig(t)
	ms := openMaps(t, cfg)
	fill(t, ms)
	if err := RemovePins(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfg.PinDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin directory after RemovePins: %v", err)
	}
	// Open descriptors keep working; the next OpenMaps starts empty.
	if n, err := ms.IPCache.Count(); err != nil || n != 1 {
		t.Fatalf("Count through an open descriptor = %d, %v", n, err)
	}
	fresh := openMaps(t, cfg)
	if got := counts(t, fresh); got != [6]int{} {
		t.Fatalf("entries after RemovePins and OpenMaps = %v; want none", got)
	}
	if err := RemovePins(Config{Node: "../etc"}); err == nil {
		t.Fatal("RemovePins of node ../etc succeeded")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string // "" for valid
	}{
		{Config{Node: "node-1.example_a"}, ""},
		{Config{Node: "n", Dir: "/sys/fs/bpf", IPCacheMax: 1, BackendsMax: maxMapEntries}, ""},
		{Config{}, "empty Node"},
		{Config{Node: ".."}, `".."`},
		{Config{Node: "a/b"}, `'/'`},
		{Config{Node: "a b"}, `' '`},
		{Config{Node: strings.Repeat("n", 254)}, "253"},
		{Config{Node: "n", Dir: "sys/fs/bpf"}, "absolute"},
		{Config{Node: "n", PolicyMax: -1}, "PolicyMax -1"},
		{Config{Node: "n", IPCacheMax: maxMapEntries + 1}, "IPCacheMax"},
		{Config{Node: "n", CIDRMax: -1}, "CIDRMax -1"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("Validate(%+v) = %v; want nil", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("Validate(%+v) = %v; want an error saying %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := OpenMaps(Config{}); err == nil || !strings.Contains(err.Error(), "Node") {
		t.Errorf("OpenMaps without a node = %v", err)
	}
}

func TestCheckSupport(t *testing.T) {
	requireSupport(t)
	for _, dir := range []string{t.TempDir(), "/nonexistent/bpffs"} {
		err := CheckSupport(dir)
		if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "mount -t bpf") {
			t.Errorf("CheckSupport(%s) = %v; want ErrNotSupported naming the directory and the mount command", dir, err)
		}
		if _, err := OpenMaps(Config{Dir: dir, Node: "n"}); !errors.Is(err, ErrNotSupported) {
			t.Errorf("OpenMaps on %s = %v; want ErrNotSupported", dir, err)
		}
	}
}

// TestMapFullNamesSizeSetting: a full map's error names the setting the
// caller gave for it (the agent's flag), not a Go field.
func TestMapFullNamesSizeSetting(t *testing.T) {
	cfg := testConfig(t)
	cfg.PolicyMax = 2
	cfg.SizeNames = SizeNames{Policy: "--bpf-policy-max"}
	ms := openMaps(t, cfg)
	var err error
	for port := uint16(1); port <= 3 && err == nil; port++ {
		err = ms.Policy.Put(PolicyLookupKey(5, Ingress, 65793, ProtoTCP, port), PolicyValue{Verdict: Allow, Cookie: 1})
	}
	if !errors.Is(err, ErrMapFull) || !strings.Contains(err.Error(), "raise --bpf-policy-max;") || strings.Contains(err.Error(), "Config.") {
		t.Fatalf("Put into a full policy map = %v; want ErrMapFull naming --bpf-policy-max", err)
	}
}
