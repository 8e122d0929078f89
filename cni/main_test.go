package cni_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// srv is the embedded etcd the tests share; each test has its own cluster.
var srv *etcdtest.Server

// pluginBin is the mesh-cni binary the tests exec, as a runtime does:
// built once for the run from this tree.
var pluginBin string

func TestMain(m *testing.M) {
	os.Exit(etcdtest.RunMainWith(m, "cni", func(tb testing.TB) {
		srv = etcdtest.Start(tb)
		dir := tb.TempDir()
		pluginBin = filepath.Join(dir, "mesh-cni")
		out, err := exec.Command("go", "build", "-o", pluginBin, "github.com/meshplane/meshplane/cmd/mesh-cni").CombinedOutput()
		if err != nil {
			tb.Fatalf("build mesh-cni: %v\n%s", err, out)
		}
		fmt.Fprintln(os.Stderr, "cni: built", pluginBin)
	}))
}
