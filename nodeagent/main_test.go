package nodeagent_test

import (
	"os"
	"testing"

	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// srv is the embedded etcd the tests share; each test has its own cluster
// name, so its own key prefix. Tests that stop etcd start their own.
var srv *etcdtest.Server

func TestMain(m *testing.M) {
	// The crash test re-runs this binary as a child agent; see
	// crash_test.go.
	if plan := os.Getenv(crashChildEnv); plan != "" {
		crashChild(plan)
		return
	}
	os.Exit(etcdtest.RunMain(m, &srv))
}
