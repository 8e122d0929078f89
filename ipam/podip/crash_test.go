package podip_test

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
)

// The crash test runs this test binary again as a child (TestMain sees
// crashChildEnv) that allocates and releases from several goroutines and
// prints every call that returned, until the parent kills it with SIGKILL:
// no Close, no deferred function, the journal's last fsync up to
// SyncInterval old, possibly a write(2) or a compaction half done. The
// parent then opens the journal and checks every acknowledged call.
const (
	crashChildEnv = "PODIP_CRASH_CHILD_DIR"
	crashModeEnv  = "PODIP_CRASH_MODE"
)

// crashMode describes what a child does.
type crashMode struct {
	name       string
	cidrs      []string
	dual       bool          // AllocateDual rather than Allocate IPv4
	quarantine time.Duration // Config.Quarantine
	workers    int
	releaseLag int // operation i releases the owner allocated releaseLag before...
	releaseMod int // ...when i % releaseMod == 0
	// killAfter: the parent kills the child after this many lines, and
	// after at least minCompactions compactions.
	killAfter      int
	minCompactions int
}

var crashModes = map[string]crashMode{
	// Dual stack, the default quarantine, some releases.
	"steady": {name: "steady", cidrs: []string{"10.1.0.0/16", "fd00::/112"}, dual: true, workers: 4,
		releaseLag: 3, releaseMod: 5, killAfter: 1000},
	// Heavy churn without quarantine, so that the journal is compacted
	// again and again and the kill can land in the middle of one.
	"churn": {name: "churn", cidrs: []string{"10.2.0.0/20"}, quarantine: -1, workers: 4,
		releaseLag: 64, releaseMod: 1, killAfter: 20000, minCompactions: 3},
}

// op is one call of a child's worker.
type op struct {
	release bool
	owner   string
}

// workerOps returns worker w's k-th call; the parent replays the same
// sequence to know which call may have been in flight at the kill.
func (m crashMode) workerOp(w, k int) op {
	// Worker w's calls: allocate i, then (sometimes) release i-lag.
	i, n := 0, 0
	for {
		if n == k {
			return op{owner: fmt.Sprintf("w%d/pod-%d", w, i)}
		}
		n++
		if i >= m.releaseLag && i%m.releaseMod == 0 {
			if n == k {
				return op{release: true, owner: fmt.Sprintf("w%d/pod-%d", w, i-m.releaseLag)}
			}
			n++
		}
		i++
	}
}

func (m crashMode) config(dir string) podip.Config {
	return podip.Config{Dir: dir, Quarantine: m.quarantine}
}

// crashChild is the child's main: it never returns normally.
func crashChild(dir string) {
	if os.Getenv(crashModeEnv) == "diskfull" {
		diskFullChild(dir)
		return
	}
	m := crashModes[os.Getenv(crashModeEnv)]
	fail := func(err error) {
		fmt.Printf("ERR %v\n", err)
		os.Exit(3)
	}
	a, err := podip.Open(m.config(dir), prefixes(m.cidrs...))
	if err != nil {
		fail(err)
	}
	var out sync.Mutex
	say := func(s string) { // one write(2) per line, so lines never mix
		out.Lock()
		defer out.Unlock()
		if _, err := os.Stdout.WriteString(s); err != nil {
			os.Exit(4)
		}
	}
	for w := range m.workers {
		go func() {
			for k := 0; ; k++ {
				o := m.workerOp(w, k)
				switch {
				case o.release:
					if err := a.Release(o.owner); err != nil {
						fail(err)
					}
					say(fmt.Sprintf("%d %d R %s\n", w, k, o.owner))
				default:
					var addrs []netip.Addr
					if m.dual {
						v4, v6, err := a.AllocateDual(o.owner)
						if errors.Is(err, podip.ErrFull) {
							select {} // wait for the kill
						} else if err != nil {
							fail(err)
						}
						addrs = []netip.Addr{v4, v6}
					} else {
						v4, err := a.Allocate(o.owner, ipam.IPv4)
						if errors.Is(err, podip.ErrFull) {
							select {}
						} else if err != nil {
							fail(err)
						}
						addrs = []netip.Addr{v4}
					}
					say(fmt.Sprintf("%d %d A %s %v\n", w, k, o.owner, addrs))
				}
				if k%500 == 0 {
					say(fmt.Sprintf("C %d\n", a.Stats().Journal.Compactions))
				}
			}
		}()
	}
	// Should the parent never kill us, do it ourselves, still without
	// Close.
	time.Sleep(time.Minute)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
}

func TestCrashRestart(t *testing.T) {
	for _, name := range []string{"steady", "churn"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testCrashRestart(t, crashModes[name])
		})
	}
}

func testCrashRestart(t *testing.T, m crashMode) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, crashModeEnv+"="+m.name)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited { // the test failed early: do not leave the child running
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	// What the child acknowledged: per owner its addresses or a release;
	// per worker its last acknowledged call.
	held := make(map[string]string) // owner -> "[addrs]"
	released := make(map[string]bool)
	lastOp := make(map[int]int)
	var releasedAddrs []string
	lines, compactions, killed := 0, 0, false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 5)
		switch {
		case f[0] == "ERR":
			t.Fatalf("child: %s", sc.Text())
		case f[0] == "C":
			compactions, _ = strconv.Atoi(f[1])
		case len(f) >= 4:
			w, _ := strconv.Atoi(f[0])
			k, _ := strconv.Atoi(f[1])
			lastOp[w] = max(lastOp[w], k)
			if f[2] == "A" {
				held[f[3]] = f[4]
			} else {
				releasedAddrs = append(releasedAddrs, strings.Fields(strings.Trim(held[f[3]], "[]"))...)
				delete(held, f[3])
				released[f[3]] = true
			}
			lines++
		default:
			t.Fatalf("child printed %q", sc.Text())
		}
		if !killed && lines >= m.killAfter && compactions >= m.minCompactions {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	waited = true
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want SIGKILL", err)
	}
	if !killed {
		t.Fatalf("child stopped after %d lines and %d compactions, before the kill", lines, compactions)
	}

	// The calls in flight at the kill: each worker's next one.
	inFlight := make(map[string]op)
	for w := range m.workers {
		o := m.workerOp(w, lastOp[w]+1)
		inFlight[o.owner] = o
	}

	a := mustOpen(t, m.config(dir), m.cidrs...)
	if err := checkConsistent(a); err != nil {
		t.Fatal(err)
	}
	st := a.Stats()
	t.Logf("%s: child acknowledged %d calls and %d compactions; after the kill: %d allocated, journal %d records, %d bytes, %d torn bytes dropped",
		m.name, lines, compactions, st.Allocated, st.Journal.Records, st.Journal.Bytes, st.Journal.DroppedBytes)
	for owner, addrs := range held {
		got := fmt.Sprint(a.Lookup(owner))
		if got == addrs {
			continue
		}
		if o, ok := inFlight[owner]; ok && o.release && got == "[]" {
			continue // its release was in flight
		}
		t.Errorf("%s held %s before the kill, %s after", owner, addrs, got)
	}
	for owner := range released {
		if got := a.Lookup(owner); got != nil {
			t.Errorf("%s was released before the kill, holds %v after", owner, got)
		}
	}
	// New allocations never collide with what survived, nor (with a
	// quarantine) with what was released just before the kill.
	taken := make(map[string]bool)
	for _, al := range a.Allocations() {
		taken[al.Addr.String()] = true
	}
	if m.quarantine >= 0 {
		for _, addr := range releasedAddrs {
			taken[addr] = true
		}
	}
	for i := range 1000 {
		addr, err := a.Allocate(fmt.Sprint("after/", i), ipam.IPv4)
		if errors.Is(err, podip.ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if taken[addr.String()] {
			t.Fatalf("%s handed out again after the restart", addr)
		}
		taken[addr.String()] = true
	}
}
