package health

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a Notify that keeps every state it was given, per member.
type recorder struct {
	mu     sync.Mutex
	states map[string][]State
	last   map[string]Member
}

func newRecorder() *recorder {
	return &recorder{states: make(map[string][]State), last: make(map[string]Member)}
}

func (r *recorder) notify(m Member) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.states[m.Name]; len(s) == 0 || s[len(s)-1] != m.State {
		r.states[m.Name] = append(s, m.State)
	}
	r.last[m.Name] = m
}

func (r *recorder) lastOf(name string) (Member, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, ok := r.last[name]
	return m, ok
}

func (r *recorder) history(name string) []State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.states[name])
}

// node is a member under test with what its Notify saw.
type node struct {
	*Gossip
	rec *recorder
}

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// testLogger sends memberlist's lines, Info and above, to the test log
// until the test ends (memberlist's goroutines log a little after Close).
func testLogger(t *testing.T) *slog.Logger {
	w := &tlogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tlogWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *tlogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(bytes.ToValidUTF8(p, nil))))
	}
	return len(p), nil
}

// start starts a member on 127.0.0.1, closed at the end of the test.
func start(t *testing.T, cfg Config) *node {
	t.Helper()
	rec := newRecorder()
	cfg.BindAddr = "127.0.0.1"
	cfg.Notify = rec.notify
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.Name, err)
	}
	t.Cleanup(func() { g.Close() })
	return &node{g, rec}
}

// cluster starts n members named prefix-0..n-1 that share key and join
// through the first, and waits until each sees all alive.
func cluster(t *testing.T, prefix string, n int, key []byte) []*node {
	t.Helper()
	ns := make([]*node, n)
	for i := range ns {
		ns[i] = start(t, Config{Name: fmt.Sprintf("%s-%d", prefix, i), Keys: [][]byte{key}, Meta: Meta{Cluster: "test"}})
		if i > 0 {
			join(t, ns[i], ns[0])
		}
	}
	for _, a := range ns {
		for _, b := range ns {
			waitState(t, a, b.Name(), Alive, b.LocalAddr().String())
		}
	}
	return ns
}

func join(t *testing.T, n, seed *node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := n.Join(ctx, []string{seed.LocalAddr().String()}); err != nil || got != 1 {
		t.Fatalf("%s joins %s: %d, %v", n.Name(), seed.Name(), got, err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s: %s", d, what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitState waits until n's Notify reported member in state (and, if addr
// is set, at that address), and Member agrees.
func waitState(t *testing.T, n *node, member string, st State, addr string) {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("%s sees %s %s", n.Name(), member, st), func() (bool, string) {
		last, ok := n.rec.lastOf(member)
		m, known := n.Member(member)
		good := ok && known && last.State == st && m.State == st
		if addr != "" {
			good = good && last.Addr.String() == addr && m.Addr.String() == addr
		}
		return good, fmt.Sprintf("notified %+v (%v), member %+v (%v)", last, ok, m, known)
	})
}
