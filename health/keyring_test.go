package health

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// TestStrangers: a member without the cluster's key, with another key, or
// of another cluster cannot join, and never shows up in the cluster.
func TestStrangers(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	ns := cluster(t, "keyed", 3, key)
	for _, tt := range []struct {
		name string
		cfg  Config
	}{
		{"no key", Config{Insecure: true, Meta: Meta{Cluster: "test"}}},
		{"wrong key", Config{Keys: [][]byte{newKey(t)}, Meta: Meta{Cluster: "test"}}},
		{"other cluster", Config{Keys: [][]byte{key}, Meta: Meta{Cluster: "other"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Name = "stranger"
			s := start(t, tt.cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			n, err := s.Join(ctx, []string{ns[0].LocalAddr().String(), ns[1].LocalAddr().String()})
			if err == nil || n != 0 {
				t.Fatalf("stranger joined %d members (err %v)", n, err)
			}
			t.Logf("join refused: %v", err)
			// The other way round: a member that dials the stranger does
			// not take its state either.
			if n, err := ns[2].Join(ctx, []string{s.LocalAddr().String()}); err == nil || n != 0 {
				t.Fatalf("member joined the stranger: %d, %v", n, err)
			}
			// Gossip still flows in the cluster (a meta update reaches
			// everyone), and nobody there heard of the stranger.
			v := "after-" + tt.name
			if err := ns[1].UpdateMeta(Meta{Cluster: "test", Version: v}, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			for _, n := range ns {
				waitFor(t, 10*time.Second, n.Name()+" sees the update", func() (bool, string) {
					m, _ := n.Member(ns[1].Name())
					return m.Meta.Version == v, m.Meta.Version
				})
				if m, ok := n.Member("stranger"); ok {
					t.Errorf("%s knows the stranger: %+v", n.Name(), m)
				}
				if len(n.Members()) != 3 {
					t.Errorf("%s has members %+v", n.Name(), n.Members())
				}
			}
			if len(s.Members()) != 1 {
				t.Errorf("the stranger knows %+v", s.Members())
			}
		})
	}
}

// TestKeyRotation rotates the cluster's key in the three steps SetKeys
// describes, without anyone being declared dead, and checks who can join
// at the end.
func TestKeyRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := newKey(t), newKey(t)
	ns := cluster(t, "rot", 3, oldKey)
	for step, keys := range [][][]byte{{oldKey, newKey}, {newKey, oldKey}, {newKey}} {
		for i, n := range ns {
			if err := n.SetKeys(keys); err != nil {
				t.Fatal(err)
			}
			// Half-way through a step, members disagree on the primary
			// key: they still understand each other.
			if i == 0 {
				checkGossip(t, ns, step)
			}
		}
		checkGossip(t, ns, step)
	}
	if got := len(ns[0].ring.GetKeys()); got != 1 {
		t.Fatalf("keyring holds %d keys after the rotation", got)
	}
	late := start(t, Config{Name: "rot-new", Keys: [][]byte{newKey}, Meta: Meta{Cluster: "test"}})
	join(t, late, ns[1])
	for _, n := range ns {
		waitState(t, n, late.Name(), Alive, "")
	}
	stale := start(t, Config{Name: "rot-stale", Keys: [][]byte{oldKey}, Meta: Meta{Cluster: "test"}})
	if n, err := stale.Join(context.Background(), []string{ns[0].LocalAddr().String()}); err == nil {
		t.Fatalf("a member with the old key joined %d", n)
	}
	for _, n := range ns {
		for _, m := range n.Members() {
			if m.State != Alive || m.Name == stale.Name() {
				t.Errorf("%s sees %+v", n.Name(), m)
			}
		}
	}
	for _, tt := range []struct {
		name string
		keys [][]byte
	}{{"none", nil}, {"short", [][]byte{make([]byte, 8)}}} {
		if err := ns[0].SetKeys(tt.keys); err == nil {
			t.Errorf("SetKeys(%s) accepted", tt.name)
		}
	}
	if err := (&Gossip{}).SetKeys([][]byte{newKey}); err == nil {
		t.Error("SetKeys on an insecure member accepted")
	}
}

// checkGossip checks that a meta update from each member reaches all.
func checkGossip(t *testing.T, ns []*node, step int) {
	t.Helper()
	for _, from := range ns {
		v := from.Name() + "-" + time.Now().Format("150405.000000")
		if err := from.UpdateMeta(Meta{Cluster: "test", Version: v}, 5*time.Second); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		for _, n := range ns {
			waitFor(t, 10*time.Second, n.Name()+" sees "+v, func() (bool, string) {
				m, _ := n.Member(from.Name())
				return m.Meta.Version == v && m.State == Alive, m.Meta.Version
			})
		}
	}
}

// TestUndecodableMeta: a member whose meta is garbage is tracked with an
// empty meta and counted, not dropped and not a panic.
func TestUndecodableMeta(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	n := start(t, Config{Name: "decoder", Keys: [][]byte{key}, Meta: Meta{Cluster: "test"}})
	ring, err := memberlist.NewKeyring(nil, key)
	if err != nil {
		t.Fatal(err)
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name, mc.BindAddr, mc.BindPort = "garbage", "127.0.0.1", 0
	mc.Keyring, mc.Label = ring, labelPrefix+"test"
	mc.Delegate = rawMeta{0xff, 0x01, 0x02}
	mc.LogOutput = io.Discard
	raw, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Shutdown()
	if _, err := raw.Join([]string{n.LocalAddr().String()}); err != nil {
		t.Fatal(err)
	}
	waitState(t, n, "garbage", Alive, "")
	m, _ := n.Member("garbage")
	if !m.Meta.Equal(Meta{}) {
		t.Errorf("meta %+v, want empty", m.Meta)
	}
	if s := n.Stats(); s.MetaErrors == 0 || s.Alive != 2 {
		t.Errorf("stats %+v, want a meta error and 2 alive", s)
	}
}

// rawMeta is a memberlist delegate that advertises fixed bytes as meta.
type rawMeta []byte

func (r rawMeta) NodeMeta(int) []byte             { return r }
func (rawMeta) NotifyMsg([]byte)                  {}
func (rawMeta) GetBroadcasts(_, _ int) [][]byte   { return nil }
func (rawMeta) LocalState(bool) []byte            { return nil }
func (rawMeta) MergeRemoteState(_ []byte, _ bool) {}
