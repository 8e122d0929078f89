package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// Tests remove their node directories; drop the parent too if they
	// left it empty (it fails harmlessly if anything else lives there).
	_ = os.Remove(filepath.Join(DefaultDir, pinSubdir))
	if code == 0 {
		// Some tests write from a second goroutine; all must be gone.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// nodeSeq makes node names unique within the test binary; the pid makes
// them unique across binaries running at once.
var nodeSeq atomic.Int64

// testConfig returns a Config for a node of the test's own under
// /sys/fs/bpf, with small maps, whose pins are removed when the test ends.
// It skips the test when this process cannot use eBPF maps.
func testConfig(t testing.TB) Config {
	t.Helper()
	requireSupport(t)
	cfg := Config{
		Node:         fmt.Sprintf("test-%d-%d", os.Getpid(), nodeSeq.Add(1)),
		IPCacheMax:   1024,
		EndpointsMax: 1024,
		PolicyMax:    1024,
		ServicesMax:  1024,
		BackendsMax:  1024,
		CIDRMax:      1024,
	}
	t.Cleanup(func() {
		if err := RemovePins(cfg); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	return cfg
}

// requireSupport skips the test, with CheckSupport's reason, when eBPF maps
// cannot be used here.
func requireSupport(t testing.TB) {
	t.Helper()
	if err := CheckSupport(DefaultDir); err != nil {
		if !errors.Is(err, ErrNotSupported) {
			t.Fatalf("CheckSupport: %v does not wrap ErrNotSupported", err)
		}
		if os.Getenv("MESHPLANE_REQUIRE_BPF") != "" {
			t.Fatalf("MESHPLANE_REQUIRE_BPF is set, but eBPF maps are not usable: %v", err)
		}
		t.Skipf("needs eBPF maps pinned under %s (root or CAP_BPF, bpffs mounted): %v", DefaultDir, err)
	}
}

// openMaps opens cfg's maps; they are closed when the test ends (before the
// pins are removed, as cleanups run last-in first-out).
func openMaps(t testing.TB, cfg Config) *Maps {
	t.Helper()
	ms, err := OpenMaps(cfg)
	if err != nil {
		t.Fatalf("OpenMaps: %v", err)
	}
	t.Cleanup(func() {
		if err := ms.Close(); err != nil {
			t.Errorf("close maps: %v", err)
		}
	})
	return ms
}

// dump returns the map's entries, failing the test if Iterate reports a key
// twice or fails.
func dump[K, V comparable](t testing.TB, m *Map[K, V]) map[K]V {
	t.Helper()
	got := make(map[K]V)
	err := m.Iterate(func(k K, v V) bool {
		if _, dup := got[k]; dup {
			t.Errorf("%s: Iterate reported %v twice", m.Name(), k)
		}
		got[k] = v
		return true
	})
	if err != nil {
		t.Fatalf("%s: Iterate: %v", m.Name(), err)
	}
	return got
}

// diffEntries describes how got differs from want, at most a few entries.
func diffEntries[K, V comparable](got, want map[K]V) string {
	var out []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			out = append(out, fmt.Sprintf("missing %v", k))
		} else if g != w {
			out = append(out, fmt.Sprintf("%v: got %v, want %v", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			out = append(out, fmt.Sprintf("unexpected %v = %v", k, g))
		}
	}
	sort.Strings(out)
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("... and %d more", len(out)-5))
	}
	return fmt.Sprint(out)
}
