package health

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestAnnounceRestart is a graceful restart as the others see it: a member
// announces a restart and stops; the others report it Restarting, never
// Dead, until it comes back under the same name (on another port here),
// when it is Alive again. A member that announces a restart and does not
// come back is Dead once the restart grace is over.
func TestAnnounceRestart(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	timing := Timing{RestartGrace: 3 * time.Second}
	ns := make([]*node, 3)
	for i := range ns {
		ns[i] = start(t, Config{Name: fmt.Sprintf("rs-%d", i), Keys: [][]byte{key}, Meta: Meta{Cluster: "test"}, Timing: timing})
		if i > 0 {
			join(t, ns[i], ns[0])
		}
	}
	for _, a := range ns {
		for _, b := range ns {
			waitState(t, a, b.Name(), Alive, b.LocalAddr().String())
		}
	}
	victim, others := ns[2], ns[:2]

	if err := victim.AnnounceRestart(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := victim.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range others {
		waitState(t, n, victim.Name(), Restarting, "")
	}
	// Long enough for memberlist to declare it dead (1.2 s at this size):
	// it must stay Restarting.
	waitFor(t, 20*time.Second, "memberlist declares the restarting member dead", func() (bool, string) {
		for _, n := range others {
			n.mu.Lock()
			e := n.members[victim.Name()]
			down := e != nil && e.mlDown
			n.mu.Unlock()
			if !down {
				return false, n.Name() + " still has it alive"
			}
		}
		return true, ""
	})
	for _, n := range others {
		if m, _ := n.Member(victim.Name()); m.State != Restarting {
			t.Errorf("%s sees the restarting %s %s", n.Name(), victim.Name(), m.State)
		}
	}
	if s := others[0].Stats(); s.Restarting != 1 || s.Dead != 0 || s.Alive != 2 {
		t.Errorf("stats while it restarts: %+v", s)
	}

	back := start(t, Config{Name: victim.Name(), Keys: [][]byte{key}, Meta: Meta{Cluster: "test"}, Timing: timing})
	join(t, back, ns[0])
	for _, n := range others {
		waitState(t, n, back.Name(), Alive, back.LocalAddr().String())
		h := n.rec.history(back.Name())
		if slices.Contains(h, Dead) || slices.Contains(h, Left) || slices.Contains(h, Unresponsive) {
			t.Errorf("%s saw %s go %v during its restart", n.Name(), back.Name(), h)
		}
	}

	// Announced, but it does not come back: Dead after the grace.
	if err := back.AnnounceRestart(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := back.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range others {
		waitState(t, n, back.Name(), Dead, "")
		if h := n.rec.history(back.Name()); len(h) < 2 || !slices.Equal(h[len(h)-2:], []State{Restarting, Dead}) {
			t.Errorf("%s saw %s go %v: want restarting, then dead", n.Name(), back.Name(), h)
		}
	}

	if err := back.AnnounceRestart(time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("announce after close: %v, want ErrClosed", err)
	}
	if err := ns[0].AnnounceRestart(0); err == nil {
		t.Error("announce with no timeout: no error")
	}
	if err := ns[1].Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := ns[1].AnnounceRestart(time.Second); !errors.Is(err, ErrLeft) {
		t.Errorf("announce after leave: %v, want ErrLeft", err)
	}
}
