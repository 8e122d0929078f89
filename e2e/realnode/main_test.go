package realnode_test

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/kubenode"
)

// binDir holds mesh-agent, mesh-controlplane and mesh-cni: from
// MESHPLANE_LAB_BIN (make build), or built by TestMain when a node can
// run here (root, kubenode's binaries), as the e2e package does.
var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		binDir = os.Getenv("MESHPLANE_LAB_BIN")
		if _, err := kubenode.Find(); binDir == "" && err == nil && os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "meshplane-realnode-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer func() { _ = os.RemoveAll(dir) }()
			cmd := exec.Command("go", "build", "-o", dir+"/",
				"github.com/meshplane/meshplane/cmd/mesh-agent", "github.com/meshplane/meshplane/cmd/mesh-controlplane",
				"github.com/meshplane/meshplane/cmd/mesh-cni")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
				return 1
			}
			binDir = dir
		}
		return m.Run()
	}()
	// The node's and the agent client's goroutines end with their
	// cleanups.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
