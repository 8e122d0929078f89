package podip_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
)

// reopen closes a and opens its directory again, as a restart does.
func reopen(t *testing.T, a *podip.Allocator, cfg podip.Config, cidrs ...string) *podip.Allocator {
	t.Helper()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	return mustOpen(t, cfg, cidrs...)
}

// allocateAll allocates IPv4 addresses until the CIDRs are full and
// returns them.
func allocateAll(t *testing.T, a *podip.Allocator, prefix string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for i := 0; ; i++ {
		addr, err := a.Allocate(fmt.Sprintf("%s-%d", prefix, i), ipam.IPv4)
		if isFull(err) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, addr)
	}
}

func TestReserve(t *testing.T) {
	ip := netip.MustParseAddr
	t.Run("journaled, never handed out", func(t *testing.T) {
		cfg := podip.Config{Dir: t.TempDir()}
		a := mustOpen(t, cfg, "10.1.2.8/29")
		if err := a.Reserve("ns/a", ip("10.1.2.12")); err != nil {
			t.Fatal(err)
		}
		records := a.Stats().Journal.Records
		if err := a.Reserve("ns/a", ip("10.1.2.12")); err != nil {
			t.Fatalf("Reserve again = %v, want nil (a no-op)", err)
		}
		if got := a.Stats().Journal.Records; got != records {
			t.Errorf("a repeated Reserve wrote %d records", got-records)
		}
		a = reopen(t, a, cfg, "10.1.2.8/29")
		if got := a.Lookup("ns/a"); len(got) != 1 || got[0] != ip("10.1.2.12") {
			t.Fatalf("after reopen Lookup = %v, want [10.1.2.12]", got)
		}
		for _, addr := range allocateAll(t, a, "new") {
			if addr == ip("10.1.2.12") {
				t.Fatal("the reserved address was handed out")
			}
		}
		if st := a.Stats().CIDRs[0]; st.Used != 5 || st.Free != 0 {
			t.Errorf("stats %+v: want 5 used (4 allocated, 1 reserved), none free", st)
		}
		if err := checkConsistent(a); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("out of quarantine", func(t *testing.T) {
		clock := newFakeClock()
		cfg := podip.Config{Dir: t.TempDir(), Clock: clock}
		a := mustOpen(t, cfg, "10.1.2.8/29")
		addr, err := a.Allocate("ns/a", ipam.IPv4)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Release("ns/a"); err != nil {
			t.Fatal(err)
		}
		if err := a.Reserve("ns/b", addr); err != nil {
			t.Fatal(err)
		}
		if st := a.Stats().CIDRs[0]; st.Quarantined != 0 || st.Used != 1 {
			t.Errorf("stats %+v: want the address used, not quarantined", st)
		}
		// The quarantine's end does not free it, before or after a restart.
		a = reopen(t, a, cfg, "10.1.2.8/29")
		clock.Advance(podip.DefaultQuarantine)
		for _, got := range allocateAll(t, a, "new") {
			if got == addr {
				t.Fatal("the reserved address was handed out after the quarantine")
			}
		}
		if got := a.Lookup("ns/b"); len(got) != 1 || got[0] != addr {
			t.Errorf("Lookup = %v, want [%s]", got, addr)
		}
		if err := checkConsistent(a); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("orphan outside every CIDR, adopted later", func(t *testing.T) {
		cfg := podip.Config{Dir: t.TempDir()}
		a := mustOpen(t, cfg, "10.1.2.8/29")
		if err := a.Reserve("ns/a", ip("10.9.0.5")); err != nil {
			t.Fatal(err)
		}
		if err := a.Reserve("ns/b", ip("10.1.2.9")); err != nil { // the gateway
			t.Fatal(err)
		}
		st := a.Stats()
		if len(st.Orphans) != 2 || st.Allocated != 2 || st.CIDRs[0].Used != 0 {
			t.Fatalf("stats %+v: want two orphans", st)
		}
		if err := a.AddCIDR(netip.MustParsePrefix("10.9.0.0/24")); err != nil {
			t.Fatal(err)
		}
		if st := a.Stats(); len(st.Orphans) != 1 || st.CIDRs[1].Used != 1 {
			t.Errorf("after AddCIDR: stats %+v: want 10.9.0.5 adopted", st)
		}
		for _, got := range allocateAll(t, a, "new") {
			if got == ip("10.9.0.5") {
				t.Fatal("the orphan was handed out")
			}
		}
		// An orphan released goes into quarantine, and comes out again.
		if err := a.Release("ns/b"); err != nil {
			t.Fatal(err)
		}
		if err := a.Reserve("ns/c", ip("10.1.2.9")); err != nil {
			t.Fatal(err)
		}
		a = reopen(t, a, cfg, "10.1.2.8/29", "10.9.0.0/24")
		if got := a.Lookup("ns/c"); len(got) != 1 || got[0] != ip("10.1.2.9") {
			t.Errorf("Lookup = %v after reopen", got)
		}
		if err := checkConsistent(a); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("conflicts change nothing", func(t *testing.T) {
		a := mustOpen(t, podip.Config{Dir: t.TempDir()}, "10.1.2.0/24", "fd00::/120")
		v4, v6, err := a.AllocateDual("ns/a")
		if err != nil {
			t.Fatal(err)
		}
		orphan := ip("10.9.0.5")
		if err := a.Reserve("ns/o", orphan); err != nil {
			t.Fatal(err)
		}
		before := a.Stats()
		for _, tc := range []struct {
			owner  string
			addr   netip.Addr
			holder string
			held   netip.Addr
		}{
			{"ns/b", v4, "ns/a", v4},
			{"ns/b", v6, "ns/a", v6},
			{"ns/b", orphan, "ns/o", orphan},
			{"ns/a", ip("10.1.2.99"), "ns/a", v4},
			{"ns/o", ip("10.9.0.6"), "ns/o", orphan},
		} {
			err := a.Reserve(tc.owner, tc.addr)
			var ce *podip.ConflictError
			if !errors.As(err, &ce) || !errors.Is(err, podip.ErrConflict) {
				t.Fatalf("Reserve(%s, %s) = %v, want a *ConflictError", tc.owner, tc.addr, err)
			}
			want := podip.ConflictError{Addr: tc.addr, Owner: tc.owner, Holder: tc.holder, Held: tc.held}
			if *ce != want {
				t.Errorf("Reserve(%s, %s): %+v, want %+v", tc.owner, tc.addr, *ce, want)
			}
		}
		after := a.Stats()
		if after.Allocated != before.Allocated || after.Journal.Records != before.Journal.Records {
			t.Errorf("conflicts changed the state: %+v, was %+v", after, before)
		}
		// Another family is no conflict.
		if err := a.Reserve("ns/o", ip("fd00::77")); err != nil {
			t.Errorf("Reserve of an IPv6 address for an owner holding only IPv4: %v", err)
		}
		if err := checkConsistent(a); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		a := mustOpen(t, podip.Config{Dir: t.TempDir()}, "10.1.2.0/24")
		for _, addr := range []netip.Addr{{}, ip("::ffff:10.1.2.5"), ip("fe80::1%eth0"), ip("0.0.0.0")} {
			if err := a.Reserve("ns/a", addr); !errors.Is(err, podip.ErrInvalidAddr) {
				t.Errorf("Reserve(%v) = %v, want ErrInvalidAddr", addr, err)
			}
		}
		if err := a.Reserve("bad\nowner", ip("10.1.2.5")); !errors.Is(err, podip.ErrInvalidOwner) {
			t.Errorf("Reserve(bad owner) = %v, want ErrInvalidOwner", err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if err := a.Reserve("ns/a", ip("10.1.2.5")); !errors.Is(err, podip.ErrClosed) {
			t.Errorf("Reserve after Close = %v, want ErrClosed", err)
		}
	})
}

// TestReserveAfterLostRecords is the agent's recovery in small: five
// allocations, the last record torn by a power loss or the whole journal
// moved away; reserving what the other records hold brings every address
// back, and a new allocation gets a fresh one.
func TestReserveAfterLostRecords(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(t *testing.T, path string)
	}{
		{"torn last record", func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			last := bytes.LastIndexByte(b[:len(b)-1], '\n') + 1
			if err := os.Truncate(path, int64(last+(len(b)-last)/2)); err != nil {
				t.Fatal(err)
			}
		}},
		{"journal moved away", func(t *testing.T, path string) {
			if err := os.Rename(path, path+".corrupt-"+time.Now().Format("20060102T150405")); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := podip.Config{Dir: t.TempDir()}
			a := mustOpen(t, cfg, "10.1.2.0/24")
			held := make(map[string]netip.Addr)
			for i := range 5 {
				owner := fmt.Sprintf("ns/pod-%d", i)
				addr, err := a.Allocate(owner, ipam.IPv4)
				if err != nil {
					t.Fatal(err)
				}
				held[owner] = addr
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			tc.fault(t, filepath.Join(cfg.Dir, "podip.journal"))
			a = mustOpen(t, cfg, "10.1.2.0/24")
			for owner, addr := range held {
				if err := a.Reserve(owner, addr); err != nil {
					t.Fatalf("Reserve(%s, %s) = %v", owner, addr, err)
				}
			}
			if st := a.Stats().CIDRs[0]; st.Used != 5 {
				t.Errorf("%d used after the reserves, want 5", st.Used)
			}
			addr, err := a.Allocate("ns/new", ipam.IPv4)
			if err != nil {
				t.Fatal(err)
			}
			for owner, h := range held {
				if addr == h {
					t.Fatalf("new owner got %s, which %s holds", addr, owner)
				}
			}
			if err := checkConsistent(a); err != nil {
				t.Fatal(err)
			}
		})
	}
}
