package controlplane

import (
	"os"
	"testing"

	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// srv is the etcd the tests share; they stay apart by cluster name.
var srv *etcdtest.Server

func TestMain(m *testing.M) { os.Exit(etcdtest.RunMain(m, &srv)) }
