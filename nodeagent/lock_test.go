package nodeagent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/nodeagent"
)

// snapshot is what a second agent must leave alone: every key of the
// cluster with its revision and lease, the state directory's files, and
// the pins under bpffs.
type snapshot struct {
	keys  map[string]kvstore.KeyValue
	files map[string]string // path -> size, mode, mtime
}

func takeSnapshot(t *testing.T, c *kvstore.Client, keys kvstore.Keys, dirs ...string) snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kvs, _, err := c.List(ctx, keys.Prefix())
	if err != nil {
		t.Fatal(err)
	}
	s := snapshot{keys: make(map[string]kvstore.KeyValue), files: make(map[string]string)}
	for _, kv := range kvs {
		s.keys[kv.Key] = kv
	}
	for _, dir := range dirs {
		err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			s.files[path] = fmt.Sprintf("%d %s %d", fi.Size(), fi.Mode(), fi.ModTime().UnixNano())
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s snapshot) diff(t *testing.T, after snapshot) {
	t.Helper()
	for k, kv := range after.keys {
		was, ok := s.keys[k]
		switch {
		case !ok:
			t.Errorf("etcd key %s appeared (%s)", k, kv.Value)
		case was.ModRevision != kv.ModRevision || was.Lease != kv.Lease:
			t.Errorf("etcd key %s was rewritten: revision %d lease %x, was %d %x (%s)", k, kv.ModRevision, kv.Lease, was.ModRevision, was.Lease, kv.Value)
		}
	}
	for k := range s.keys {
		if _, ok := after.keys[k]; !ok {
			t.Errorf("etcd key %s vanished", k)
		}
	}
	for p, f := range after.files {
		if was, ok := s.files[p]; !ok {
			t.Errorf("%s appeared", p)
		} else if was != f {
			t.Errorf("%s changed: %s, was %s", p, f, was)
		}
	}
	for p := range s.files {
		if _, ok := after.files[p]; !ok {
			t.Errorf("%s vanished", p)
		}
	}
}

// TestAgentStateDirLock starts a second agent on a running agent's state
// directory, under the same node name and under another: it must fail at
// once, naming the running agent's PID, having read, written or pinned
// nothing (before, it resumed the running agent's lease, rewrote its node
// record and registered a phantom node on that lease).
func TestAgentStateDirLock(t *testing.T) {
	t.Parallel()
	cfg, client, keys := mapsOnly(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	addPods(t, ta, 0, 2)

	for _, tc := range []struct {
		name string
		node func(nodeagent.Config) string
	}{
		{"same node", func(c nodeagent.Config) string { return c.Node }},
		{"another node", func(nodeagent.Config) string { return fmt.Sprintf("phantom-%d-%d", os.Getpid(), nodeSeq.Add(1)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			second := agentConfig(t, srv, cfg.Cluster, 2)
			second.Node = tc.node(cfg)
			t.Cleanup(func() { _ = bpf.RemovePins(bpf.Config{Node: second.Node}) })
			second.StateDir = cfg.StateDir
			second.Datapath = nodeagent.DatapathNone
			pinsOf := func(node string) string { return bpf.Config{Node: node}.PinDir() }
			dirs := []string{cfg.StateDir, pinsOf(cfg.Node), pinsOf(second.Node), cfg.APISocket, second.APISocket}
			before := takeSnapshot(t, client, keys, dirs...)

			a, err := nodeagent.New(second)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = a.Run(ctx)
			var inUse *nodeagent.StateDirInUseError
			if !errors.As(err, &inUse) || !errors.Is(err, nodeagent.ErrStateDirInUse) {
				t.Fatalf("second agent's Run() = %v, want a *StateDirInUseError", err)
			}
			want := fmt.Sprintf("state directory %s is in use by mesh-agent PID %d: stop it, or give this agent another --state-dir/--node",
				cfg.StateDir, os.Getpid())
			if inUse.PID != os.Getpid() || err.Error() != want {
				t.Errorf("error %q (PID %d), want %q", err, inUse.PID, want)
			}
			before.diff(t, takeSnapshot(t, client, keys, dirs...))
		})
	}
	// The first agent never noticed.
	ta.waitOK(t)
	addPods(t, ta, 2, 3)
}
