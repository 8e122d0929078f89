package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/lab"
)

// binDir holds meshctl, mesh-agent and mesh-controlplane, built once by TestMain (or taken
// from MESHPLANE_LAB_BIN, e.g. bin/ after make build).
var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		binDir = os.Getenv("MESHPLANE_LAB_BIN")
		if binDir == "" && os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "meshplane-e2e-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			cmd := exec.Command("go", "build", "-o", dir+"/",
				"github.com/meshplane/meshplane/cmd/meshctl", "github.com/meshplane/meshplane/cmd/mesh-agent",
				"github.com/meshplane/meshplane/cmd/mesh-controlplane")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
				return 1
			}
			binDir = dir
		}
		return m.Run()
	}()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// requireRoot skips without root, or fails under MESHPLANE_REQUIRE_BPF
// (CI), where the tests must run.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("MESHPLANE_REQUIRE_BPF") != "" {
		t.Fatal("MESHPLANE_REQUIRE_BPF is set, but the e2e tests need root")
	}
	t.Skip("the e2e tests build network namespaces and load eBPF: they need root")
}

// routingModeEnv names the routing mode of the suite's labs: tunnel (the
// lab's default) or native. make test runs the suite in both.
const routingModeEnv = "MESHPLANE_ROUTING_MODE"

// setRouting gives topo the routing mode of MESHPLANE_ROUTING_MODE, if
// set; the tests of routing itself set theirs and do not call it.
func setRouting(t testing.TB, topo *lab.Topology) {
	t.Helper()
	switch m := os.Getenv(routingModeEnv); m {
	case "":
	case lab.RoutingTunnel, lab.RoutingNative:
		topo.Routing = m
	default:
		t.Fatalf("%s=%q: use %s or %s", routingModeEnv, m, lab.RoutingTunnel, lab.RoutingNative)
	}
}

func binaries() (meshctl, agent string) {
	return filepath.Join(binDir, "meshctl"), filepath.Join(binDir, "mesh-agent")
}

func uniqueName(t testing.TB) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "e" + hex.EncodeToString(b[:])
}
