package nodeagent_test

import (
	"errors"
	"os"
	"testing"

	"github.com/meshplane/meshplane/bpf"
	"github.com/meshplane/meshplane/nodeagent"
)

// TestCleanup runs an agent, checks that Cleanup refuses while it runs and
// removes nothing, then stops it and checks that Cleanup removes its pins,
// state directory and API socket, that a second Cleanup is no error, and
// that a new agent on the same node starts from scratch.
func TestCleanup(t *testing.T) {
	t.Parallel()
	cfg, _, _ := mapsOnly(t)
	ta := startAgent(t, cfg)
	ta.waitOK(t)
	addPods(t, ta, 0, 2)
	pins := bpf.Config{Dir: cfg.BPF.Dir, Node: cfg.Node}.PinDir()
	paths := []string{pins, cfg.StateDir, cfg.APISocket}

	var inUse *nodeagent.StateDirInUseError
	if err := nodeagent.Cleanup(cfg); !errors.As(err, &inUse) {
		t.Fatalf("Cleanup with the agent running = %v, want a *StateDirInUseError", err)
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("Cleanup refused but %s is gone: %v", p, err)
		}
	}
	ta.waitOK(t)

	ta.stop()
	if _, err := os.Stat(pins); err != nil {
		t.Fatalf("a stopped agent keeps its pins: %v", err)
	}
	if err := nodeagent.Cleanup(cfg); err != nil {
		t.Fatalf("Cleanup = %v", err)
	}
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Cleanup, %s: %v; want it gone", p, err)
		}
	}
	if err := nodeagent.Cleanup(cfg); err != nil {
		t.Fatalf("second Cleanup = %v, want nil", err)
	}
	// A later install on the node starts clean.
	again := startAgent(t, cfg)
	again.waitOK(t)
	addPods(t, again, 0, 1)
}
