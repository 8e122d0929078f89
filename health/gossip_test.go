package health

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestFailureDetection is the life of a member as the others see it: kill
// (Close, as a crash), restart on a new port, then a graceful leave.
func TestFailureDetection(t *testing.T) {
	t.Parallel()
	ns := cluster(t, "fd", 5, newKey(t))
	victim := ns[3]
	others := slices.Delete(slices.Clone(ns), 3, 4)

	if err := victim.Close(); err != nil {
		t.Fatal(err)
	}
	suspected := 0
	for _, n := range others {
		waitState(t, n, victim.Name(), Dead, "")
		h := n.rec.history(victim.Name())
		if i := slices.Index(h, Suspect); i >= 0 {
			suspected++
			if !slices.Equal(h[i:], []State{Suspect, Dead}) {
				t.Errorf("%s saw %s go %v", n.Name(), victim.Name(), h)
			}
		} else if !slices.Equal(h, []State{Alive, Dead}) {
			t.Errorf("%s saw %s go %v", n.Name(), victim.Name(), h)
		}
	}
	// Some member's own probe failed first: it must have reported Suspect
	// (this guards the log line that memberlist reports suspicion with).
	if suspected == 0 {
		t.Errorf("no member reported %s suspect before dead", victim.Name())
	}
	if s := ns[0].Stats(); s.Alive != 4 || s.Dead != 1 || s.Suspect != 0 || s.Left != 0 {
		t.Errorf("stats after the kill: %+v", s)
	}

	// The same name comes back on another port.
	back := start(t, Config{Name: victim.Name(), Keys: victim.cfg.Keys, Meta: Meta{Cluster: "test", Version: "v2"}})
	if back.LocalAddr() == victim.LocalAddr() {
		t.Fatalf("restarted on the same address %s", back.LocalAddr())
	}
	join(t, back, ns[0])
	for _, n := range others {
		waitState(t, n, back.Name(), Alive, back.LocalAddr().String())
		if m, _ := n.Member(back.Name()); m.Meta.Version != "v2" {
			t.Errorf("%s sees %s with meta %+v", n.Name(), back.Name(), m.Meta)
		}
	}
	for _, n := range others {
		waitState(t, back, n.Name(), Alive, n.LocalAddr().String())
	}

	// A graceful leave is Left, not Dead, everywhere.
	leaver := ns[1]
	if err := leaver.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range append([]*node{back}, others...) {
		if n == leaver {
			continue
		}
		waitState(t, n, leaver.Name(), Left, "")
		if slices.Contains(n.rec.history(leaver.Name()), Dead) {
			t.Errorf("%s saw %s dead: %v", n.Name(), leaver.Name(), n.rec.history(leaver.Name()))
		}
	}
	if err := leaver.Leave(time.Second); err != nil {
		t.Errorf("second leave: %v", err)
	}
	if err := leaver.UpdateMeta(Meta{Cluster: "test"}, time.Second); !errors.Is(err, ErrLeft) {
		t.Errorf("update meta after leave: %v, want ErrLeft", err)
	}
	if n, err := leaver.Join(context.Background(), []string{ns[0].LocalAddr().String()}); !errors.Is(err, ErrLeft) {
		t.Errorf("join after leave: %d, %v, want ErrLeft", n, err)
	}
	if s := ns[0].Stats(); s.Alive != 4 || s.Left != 1 || s.Dead != 0 {
		t.Errorf("stats at the end: %+v: %+v", s, ns[0].Members())
	}
	got := ns[0].Members()
	if len(got) != 5 || !slices.IsSortedFunc(got, func(a, b Member) int { return cmpString(a.Name, b.Name) }) {
		t.Errorf("members: %+v", got)
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestMetaUpdate(t *testing.T) {
	t.Parallel()
	ns := cluster(t, "meta", 3, newKey(t))
	want := Meta{
		Cluster:  "test",
		NodeIPs:  []netip.Addr{netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("fd00::7")},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.7.0/24"), netip.MustParsePrefix("fd01:0:0:7::/64")},
		Version:  "v1.2.3",
	}
	if err := ns[2].UpdateMeta(want, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		waitFor(t, 10*time.Second, n.Name()+" sees the new meta", func() (bool, string) {
			last, _ := n.rec.lastOf(ns[2].Name())
			m, _ := n.Member(ns[2].Name())
			return last.Meta.Equal(want) && m.Meta.Equal(want) && m.State == Alive, last.Meta.Version
		})
	}
	// Returned values are copies.
	m, _ := ns[0].Member(ns[2].Name())
	m.Meta.NodeIPs[0] = netip.MustParseAddr("192.0.2.1")
	if again, _ := ns[0].Member(ns[2].Name()); !again.Meta.Equal(want) {
		t.Errorf("Member shares its slices: %+v", again.Meta)
	}

	for _, tt := range []struct {
		name string
		meta Meta
		d    time.Duration
		want error
	}{
		{"other cluster", Meta{Cluster: "other"}, time.Second, nil},
		{"too big", Meta{Cluster: "test", Version: string(make([]byte, 129))}, time.Second, ErrMeta},
		{"no timeout", want, 0, nil},
	} {
		err := ns[2].UpdateMeta(tt.meta, tt.d)
		if err == nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%s: UpdateMeta = %v, want an error (%v)", tt.name, err, tt.want)
		}
	}
}

// TestNotifyCoalesces: a Notify that is slow sees the latest state of a
// member, not every change in turn.
func TestNotifyCoalesces(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	release := make(chan struct{})
	var calls []Member
	rec := newRecorder()
	slow := func(m Member) {
		<-release
		calls = append(calls, m) // one goroutine calls Notify
		rec.notify(m)
	}
	a, err := New(Config{Name: "slow-a", BindAddr: "127.0.0.1", Keys: [][]byte{key}, Notify: slow, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b := start(t, Config{Name: "slow-b", Keys: [][]byte{key}})
	join(t, b, &node{a, nil})
	for i := range 20 {
		if err := b.UpdateMeta(Meta{Version: "v" + strconv.Itoa(i)}, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "a's memberlist has the last meta", func() (bool, string) {
		m, _ := a.Member("slow-b")
		return m.Meta.Version == "v19", m.Meta.Version
	})
	close(release)
	waitFor(t, 10*time.Second, "Notify sees the last meta", func() (bool, string) {
		m, _ := rec.lastOf("slow-b")
		return m.Meta.Version == "v19", m.Meta.Version
	})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range calls {
		if c.Name == "slow-b" {
			n++
		}
	}
	if n > 3 {
		t.Errorf("Notify got %d calls about slow-b for 20 updates: not coalesced", n)
	}
}

func TestJoin(t *testing.T) {
	t.Parallel()
	n := start(t, Config{Name: "join-a", Insecure: true})
	ctx := context.Background()
	if got, err := n.Join(ctx, nil); got != 0 || err != nil {
		t.Errorf("join nobody: %d, %v", got, err)
	}
	if got, err := n.Join(ctx, []string{n.LocalAddr().String()}); got != 0 || err != nil {
		t.Errorf("join itself: %d, %v", got, err)
	}
	// A port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	if got, err := n.Join(ctx, []string{dead}); got != 0 || err == nil {
		t.Errorf("join a closed port: %d, %v", got, err)
	} else {
		t.Logf("join a closed port: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := n.Join(cctx, []string{dead}); !errors.Is(err, context.Canceled) {
		t.Errorf("join with a canceled context: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if _, err := n.Join(ctx, []string{dead}); !errors.Is(err, ErrClosed) {
		t.Errorf("join after close: %v", err)
	}
	if err := n.Leave(time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("leave after close: %v", err)
	}
	if err := n.UpdateMeta(Meta{}, time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("update meta after close: %v", err)
	}
}

func TestBindInUse(t *testing.T) {
	t.Parallel()
	n := start(t, Config{Name: "bind-a", Insecure: true})
	_, err := New(Config{Name: "bind-b", BindAddr: "127.0.0.1", BindPort: int(n.LocalAddr().Port()), Insecure: true})
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("New on a port in use: %v", err)
	}
	t.Log(err)
	_, err = New(Config{Name: "bind-c", BindAddr: "192.0.2.1", BindPort: DefaultBindPort, Insecure: true})
	if !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("New on an address not of this host: %v", err)
	}
	t.Log(err)
}
