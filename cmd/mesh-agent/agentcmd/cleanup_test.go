package agentcmd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCleanupFlag: --cleanup needs no etcd or node IP, removes the node's
// pins, state directory and API socket and leaves other nodes' pins; run
// again, it succeeds.
func TestCleanupFlag(t *testing.T) {
	dir := t.TempDir()
	bpffs, state, sock := filepath.Join(dir, "bpffs"), filepath.Join(dir, "state"), filepath.Join(dir, "agent.sock")
	mine, other := filepath.Join(bpffs, "meshplane", "n1"), filepath.Join(bpffs, "meshplane", "n2")
	for _, d := range []string{mine, other, state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(mine, "mp_ipcache"), filepath.Join(state, "lease"), sock} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"--cleanup", "--node-name", "n1", "--bpffs", bpffs, "--state-dir", state, "--api-socket", sock}
	for run := range 2 {
		var stderr strings.Builder
		if code := Main(context.Background(), args, &stderr); code != 0 {
			t.Fatalf("run %d: exit %d: %s", run, code, stderr.String())
		}
		if !strings.Contains(stderr.String(), "cleanup done") {
			t.Errorf("run %d: stderr %q does not say cleanup done", run, stderr.String())
		}
	}
	for _, p := range []string{mine, state, sock} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v; want it removed", p, err)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another node's pins: %v; want them kept", err)
	}
}
