package podip_test

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
)

const header = "meshplane podip journal v1\n"

// writeJournal fills a journal in a new directory with allocations of
// pod-0 ... pod-(n-1) in 10.1.2.0/24 and returns the directory and the
// file's bytes.
func writeJournal(t *testing.T, n int) (string, []byte) {
	t.Helper()
	dir := t.TempDir()
	a, err := podip.Open(podip.Config{Dir: dir}, prefixes("10.1.2.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "podip.journal"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, data
}

// line builds a journal line with a valid checksum.
func line(body string) string {
	return fmt.Sprintf("%08x %s\n", crc32.Checksum([]byte(body), crc32.MakeTable(crc32.Castagnoli)), body)
}

func TestJournalFormat(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	a := mustOpen(t, podip.Config{Dir: dir, Clock: clock}, "10.1.2.0/24", "fd00::/120")
	if _, _, err := a.AllocateDual("ns/pod a/c1"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if err := a.Release("ns/pod a/c1"); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "podip.journal"))
	if err != nil {
		t.Fatal(err)
	}
	t0 := clock.Now().Add(-time.Second).UnixNano()
	t1 := clock.Now().UnixNano()
	want := header +
		line(fmt.Sprintf("A %d 10.1.2.2 ns/pod a/c1", t0)) +
		line(fmt.Sprintf("A %d fd00::2 ns/pod a/c1", t0)) +
		line(fmt.Sprintf("R %d 10.1.2.2 ns/pod a/c1", t1)) +
		line(fmt.Sprintf("R %d fd00::2 ns/pod a/c1", t1))
	if string(data) != want {
		t.Errorf("journal:\n%s\nwant:\n%s", data, want)
	}
	for _, name := range []string{dir, filepath.Join(dir, "podip.journal")} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 && name != dir {
			t.Errorf("%s has mode %v", name, perm)
		}
	}
}

func TestStateDirCreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "podip")
	mustOpen(t, podip.Config{Dir: dir}, "10.1.2.0/24")
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("state directory mode %v, want 0700", perm)
	}
}

// TestTornTail cuts the last record short, the way a crash in the middle
// of its write(2) can: Open drops just that record, cuts it off the file,
// and appends after the last valid one.
func TestTornTail(t *testing.T) {
	dir, data := writeJournal(t, 10)
	path := filepath.Join(dir, "podip.journal")
	lastLen := len(data) - 1 - bytes.LastIndexByte(data[:len(data)-1], '\n')
	for _, tc := range []struct {
		name    string
		journal []byte
		lost    int // allocations lost
		dropped int
	}{
		{"cut mid-record", data[:len(data)-lastLen/2], 1, lastLen - lastLen/2},
		{"cut after one byte", data[:len(data)-lastLen+1], 1, 1},
		{"only the newline missing", data[:len(data)-1], 1, lastLen - 1},
		{"zeros after the records", append(bytes.Clone(data), make([]byte, 4096)...), 0, 4096},
		{"cut, then zeros", append(bytes.Clone(data[:len(data)-3]), make([]byte, 100)...), 1, lastLen - 3 + 100},
		{"torn header", []byte(header[:10]), 10, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, tc.journal, 0o600); err != nil {
				t.Fatal(err)
			}
			a, err := podip.Open(podip.Config{Dir: dir}, prefixes("10.1.2.0/24"))
			if err != nil {
				t.Fatal(err)
			}
			st := a.Stats()
			if st.Allocated != 10-tc.lost || st.Journal.DroppedBytes != int64(tc.dropped) {
				t.Errorf("%d allocated, %d bytes dropped; want %d, %d", st.Allocated, st.Journal.DroppedBytes, 10-tc.lost, tc.dropped)
			}
			if fi, err := os.Stat(path); err != nil || fi.Size() != st.Journal.Bytes {
				t.Errorf("file of %v bytes (%v), stats say %d: the torn tail was not cut off", fi.Size(), err, st.Journal.Bytes)
			}
			// Appends continue after the last valid record.
			if _, err := a.Allocate("after", ipam.IPv4); err != nil {
				t.Fatal(err)
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			a = mustOpen(t, podip.Config{Dir: dir}, "10.1.2.0/24")
			if st := a.Stats(); st.Allocated != 11-tc.lost || st.Journal.DroppedBytes != 0 {
				t.Errorf("after reopen: %d allocated, %d bytes dropped", st.Allocated, st.Journal.DroppedBytes)
			}
			if err := checkConsistent(a); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCorruptJournal checks that damage anywhere but in the tail, and a
// record that contradicts the ones before it, stop Open with an error that
// names the file and the line.
func TestCorruptJournal(t *testing.T) {
	dir, data := writeJournal(t, 10)
	path := filepath.Join(dir, "podip.journal")
	lines := strings.SplitAfter(string(data), "\n")
	offset := func(line int) int64 { return int64(len(strings.Join(lines[:line-1], ""))) }
	flipped := []byte(strings.Join(lines, ""))
	flipped[offset(5)+20] ^= 0x01
	owner3 := strings.Fields(lines[4])[4] // line 5 allocates pod-3
	addr3 := strings.Fields(lines[4])[3]
	for _, tc := range []struct {
		name    string
		journal string
		line    int
		reason  string
	}{
		{"bit flip in the middle", string(flipped), 5, "checksum mismatch"},
		{"garbage line in the middle", strings.Join(lines[:3], "") + "garbage\n" + strings.Join(lines[3:], ""), 4, "without a checksum"},
		{"zeros in the middle", strings.Join(lines[:3], "") + string(make([]byte, 50)) + "\n" + strings.Join(lines[3:], ""), 4, "checksum"},
		{"not a journal", "hello\n" + strings.Join(lines[1:], ""), 1, "not a pod IP journal"},
		{"address allocated twice", string(data) + line("A 1 "+addr3+" other"), 12, "held by"},
		{"owner allocated twice", string(data) + line("A 1 10.1.2.200 "+owner3), 12, "already holds"},
		{"release by another owner", string(data) + line("R 1 "+addr3+" other"), 12, "does not hold it"},
		{"quarantine of a held address", string(data) + line("Q 1 "+addr3+" other"), 12, "held by"},
		{"unknown kind", string(data) + line("X 1 10.1.2.200 other") + line("A 1 10.1.2.201 x"), 12, "unknown record kind"},
		{"unknown kind at the end", string(data) + line("X 1 10.1.2.200 other"), 12, "unknown record kind"},
		{"torn line before a record of another kind", string(data) + "0123 A 1\n" + line("X 1 10.1.2.200 other"), 12, "without a checksum"},
		{"non-canonical address", line("A 1 10.1.2.020 x") + line("A 1 10.1.2.21 y"), 2, "bad address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := tc.journal
			if !strings.HasPrefix(j, header) && !strings.HasPrefix(j, "hello") {
				j = header + j
			}
			if err := os.WriteFile(path, []byte(j), 0o600); err != nil {
				t.Fatal(err)
			}
			a, err := podip.Open(podip.Config{Dir: dir}, prefixes("10.1.2.0/24"))
			if err == nil {
				_ = a.Close()
				t.Fatal("Open succeeded")
			}
			var ce *podip.CorruptJournalError
			if !errors.As(err, &ce) || !errors.Is(err, podip.ErrCorruptJournal) {
				t.Fatalf("Open = %v, want a *CorruptJournalError", err)
			}
			wantOffset := offset(tc.line)
			if tc.line == 1 {
				wantOffset = 0
			}
			if ce.Path != path || ce.Line != tc.line || ce.Offset != wantOffset || !strings.Contains(ce.Reason, tc.reason) {
				t.Errorf("got %s line %d offset %d reason %q; want line %d offset %d reason %q",
					ce.Path, ce.Line, ce.Offset, ce.Reason, tc.line, wantOffset, tc.reason)
			}
			msg := err.Error()
			advice := fmt.Sprintf("move the file away (mv %s %s.corrupt-$(date +%%Y%%m%%dT%%H%%M%%S)) and restart the agent", path, path)
			for _, want := range []string{path, fmt.Sprintf("line %d", tc.line), advice} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not name %q", msg, want)
				}
			}
			// Nothing was changed: the operator sees the file as it was.
			if got, _ := os.ReadFile(path); string(got) != j {
				t.Error("Open changed a corrupt journal")
			}
		})
	}
}

// TestCompaction churns through many allocations and releases: the journal
// stays bounded, and the state after a reopen is the state before it,
// quarantines included.
func TestCompaction(t *testing.T) {
	clock := newFakeClock()
	cfg := podip.Config{Dir: t.TempDir(), Clock: clock, SyncInterval: 5 * time.Millisecond}
	cidrs := []string{"10.1.0.0/20", "fd00::/116"}
	a, err := podip.Open(cfg, prefixes(cidrs...))
	if err != nil {
		t.Fatal(err)
	}
	const cycles, window = 30000, 50
	for i := range cycles {
		if i%2 == 0 {
			_, _, err = a.AllocateDual(fmt.Sprint("pod-", i))
		} else {
			_, err = a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4)
		}
		if err != nil {
			t.Fatal(err)
		}
		if i >= window {
			if err := a.Release(fmt.Sprint("pod-", i-window)); err != nil {
				t.Fatal(err)
			}
		}
		clock.Advance(10 * time.Millisecond) // about 3,000 addresses in quarantine
	}
	path := filepath.Join(cfg.Dir, "podip.journal")
	eventually(t, 10*time.Second, "compaction", func() error {
		st := a.Stats()
		live := st.Allocated
		for _, c := range st.CIDRs {
			live += c.Quarantined
		}
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if st.Journal.Compactions == 0 || st.Journal.Records > max(podip.CompactMinRecords, 4*live) || fi.Size() != st.Journal.Bytes {
			return fmt.Errorf("%d compactions, %d records for %d live, %d bytes (%d on disk), compact error %w",
				st.Journal.Compactions, st.Journal.Records, live, st.Journal.Bytes, fi.Size(), st.Journal.CompactError)
		}
		return nil
	})
	st := a.Stats()
	if st.Journal.Bytes > 1<<20 {
		t.Errorf("journal of %d bytes after %d cycles", st.Journal.Bytes, cycles)
	}
	t.Logf("%d compactions; journal %d records, %d bytes", st.Journal.Compactions, st.Journal.Records, st.Journal.Bytes)
	before := a.Allocations()
	lastV4 := a.Lookup(fmt.Sprint("pod-", cycles-1))[0]
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, "podip.journal.tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}

	a = mustOpen(t, cfg, cidrs...)
	if err := checkConsistent(a); err != nil {
		t.Fatal(err)
	}
	after := a.Allocations()
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("allocations changed across compaction and reopen")
	}
	st2 := a.Stats()
	if fmt.Sprint(st2.CIDRs) != fmt.Sprint(st.CIDRs) {
		t.Errorf("CIDR stats changed across reopen:\nbefore %+v\nafter  %+v", st.CIDRs, st2.CIDRs)
	}
	// The cursor came back: the next address is the one after the last
	// allocated.
	next, err := a.Allocate("next", ipam.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if next != lastV4.Next() {
		t.Errorf("next allocation %s, want %s (after the last allocated)", next, lastV4.Next())
	}
}

// TestLeftoverTempFile: a crash during a compaction, before its rename,
// leaves a temporary file; the journal is complete and the file goes.
func TestLeftoverTempFile(t *testing.T) {
	dir, _ := writeJournal(t, 5)
	tmp := filepath.Join(dir, "podip.journal.tmp")
	if err := os.WriteFile(tmp, []byte(header+"half a snap"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := mustOpen(t, podip.Config{Dir: dir}, "10.1.2.0/24")
	if st := a.Stats(); st.Allocated != 5 {
		t.Errorf("%d allocated, want 5", st.Allocated)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file still there: %v", err)
	}
}
