package podip_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/ipam/podip"
)

func TestMain(m *testing.M) {
	// The crash test re-runs this binary as a child that allocates until
	// it is killed; see crash_test.go.
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	goleak.VerifyTestMain(m)
}

// fakeClock is a Clock that moves only when told.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// mustOpen opens an allocator that is closed when the test ends.
func mustOpen(t testing.TB, cfg podip.Config, cidrs ...string) *podip.Allocator {
	t.Helper()
	a, err := podip.Open(cfg, prefixes(cidrs...))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return a
}

func prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, c := range s {
		out[i] = netip.MustParsePrefix(c)
	}
	return out
}

// checkConsistent checks the invariants that hold whatever the journal
// held: no address twice, the per-CIDR counts add up, and every
// allocation is either in a CIDR's range or an orphan.
func checkConsistent(a *podip.Allocator) error {
	allocs := a.Allocations()
	seen := make(map[netip.Addr]string)
	perOwner := make(map[string][]netip.Addr)
	for _, al := range allocs {
		if prev, ok := seen[al.Addr]; ok {
			return fmt.Errorf("%s held by %q and %q", al.Addr, prev, al.Owner)
		}
		seen[al.Addr] = al.Owner
		perOwner[al.Owner] = append(perOwner[al.Owner], al.Addr)
	}
	for owner, addrs := range perOwner {
		got := a.Lookup(owner)
		if fmt.Sprint(got) != fmt.Sprint(addrs) {
			return fmt.Errorf("Lookup(%q) = %v, Allocations say %v", owner, got, addrs)
		}
		if len(addrs) == 2 && addrs[0].Is4() == addrs[1].Is4() {
			return fmt.Errorf("%q holds two addresses of one family: %v", owner, addrs)
		}
	}
	st := a.Stats()
	used := 0
	for _, c := range st.CIDRs {
		if c.Size != c.Reserved+c.Used+c.Quarantined+c.Free || c.Free < 0 || c.Used < 0 || c.Quarantined < 0 {
			return fmt.Errorf("CIDR stats do not add up: %+v", c)
		}
		used += c.Used
	}
	if used+len(st.Orphans) != len(allocs) || st.Allocated != len(allocs) || st.Owners != len(perOwner) {
		return fmt.Errorf("%d used in CIDRs + %d orphans, %d allocated, %d allocations, %d owners (%d in stats)",
			used, len(st.Orphans), st.Allocated, len(allocs), len(perOwner), st.Owners)
	}
	for _, o := range st.Orphans {
		if seen[o.Addr] != o.Owner {
			return fmt.Errorf("orphan %v is not an allocation", o)
		}
	}
	return nil
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isFull(err error) bool { return errors.Is(err, podip.ErrFull) }
