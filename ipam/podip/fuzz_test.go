package podip_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
)

// fuzzCIDRs are the CIDRs FuzzJournalLoad opens journals with; the seeds
// also hold addresses outside them (orphans).
var fuzzCIDRs = []string{"10.1.2.0/24", "fd00::/120"}

// seedJournal returns a journal written by the allocator itself: dual
// stack allocations, releases in and out of quarantine, orphans.
func seedJournal(f *testing.F, clock *fakeClock) []byte {
	f.Helper()
	dir := f.TempDir()
	cfg := podip.Config{Dir: dir, Clock: clock}
	a, err := podip.Open(cfg, prefixes("10.1.2.0/24", "10.1.3.0/24", "fd00::/120"))
	if err != nil {
		f.Fatal(err)
	}
	for i := range 12 {
		owner := fmt.Sprintf("ns/pod %d/c", i)
		if i%3 == 0 {
			_, _, err = a.AllocateDual(owner)
		} else {
			_, err = a.Allocate(owner, ipam.IPv4)
		}
		if err != nil {
			f.Fatal(err)
		}
		if i%4 == 1 {
			clock.Advance(20 * time.Second)
			if err := a.Release(fmt.Sprintf("ns/pod %d/c", i-1)); err != nil {
				f.Fatal(err)
			}
		}
	}
	if err := a.AddCIDR(prefixes("10.1.4.0/24")[0]); err != nil {
		f.Fatal(err)
	}
	if err := a.Close(); err != nil {
		f.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "podip.journal"))
	if err != nil {
		f.Fatal(err)
	}
	return data
}

// FuzzJournalLoad opens arbitrary bytes as the journal: Open returns a
// *CorruptJournalError or a consistent allocator, whose state survives a
// Close and a reopen, and which hands out no address twice.
func FuzzJournalLoad(f *testing.F) {
	clock := newFakeClock()
	seed := seedJournal(f, clock)
	f.Add(seed)
	f.Add(seed[:len(seed)-7])
	f.Add(append(slices.Clone(seed), 0, 0, 0))
	f.Add([]byte{})
	f.Add([]byte(header))
	f.Add([]byte(header[:5]))
	f.Add([]byte(header + line("Q 0 10.1.2.9 x") + line("A 0 10.1.2.9 y")))
	f.Add([]byte(header + line("A 0 10.9.9.9 x") + line("R 5 10.9.9.9 x")))
	f.Add([]byte(header + line("A -5 10.1.2.0 network") + line("A 0 fd00::1 gateway")))
	now := clock.Now()
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := fuzzDir(t)
		path := filepath.Join(dir, "podip.journal")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		clock := newFakeClock()
		clock.ns.Store(now.UnixNano())
		cfg := podip.Config{Dir: dir, Clock: clock, SyncInterval: time.Hour}
		a, err := podip.Open(cfg, prefixes(fuzzCIDRs...))
		if err != nil {
			if !errors.Is(err, podip.ErrCorruptJournal) {
				t.Fatalf("Open: %v, want a corrupt journal error", err)
			}
			return
		}
		defer a.Close()
		if err := checkConsistent(a); err != nil {
			t.Fatal(err)
		}
		taken := make(map[string]bool)
		for _, al := range a.Allocations() {
			taken[al.Addr.String()] = true
		}
		if a.Lookup("fuzz/new") == nil {
			v4, err := a.Allocate("fuzz/new", ipam.IPv4)
			if err == nil && taken[v4.String()] {
				t.Fatalf("%s handed out twice", v4)
			}
			if err != nil && !errors.Is(err, podip.ErrFull) {
				t.Fatal(err)
			}
		}
		before, stats := a.Allocations(), a.Stats()
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		b, err := podip.Open(cfg, prefixes(fuzzCIDRs...))
		if err != nil {
			t.Fatalf("reopen after a successful open: %v", err)
		}
		defer b.Close()
		if after := b.Allocations(); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("allocations changed across a reopen:\nbefore %v\nafter  %v", before, after)
		}
		if st := b.Stats(); fmt.Sprint(st.CIDRs) != fmt.Sprint(stats.CIDRs) || st.Journal.DroppedBytes != 0 {
			t.Fatalf("stats changed across a reopen:\nbefore %+v\nafter  %+v", stats, st)
		}
	})
}

// fuzzDir returns a directory for one fuzz input: in tmpfs when there is
// one, where fsync costs nothing, so the fuzzer runs a hundred times
// faster through the same code and system calls.
func fuzzDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "podip-fuzz-"); err == nil {
			t.Cleanup(func() { _ = os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}
