package kubetest

import (
	"fmt"
	"os"
	"testing"

	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// RunMain starts one embedded etcd and one kube-apiserver on it for a whole
// test binary, stores the apiserver in *srv (its Etcd field is
// the etcd, which tests may use too under cluster names of their own), runs the tests, stops both and
// fails the run if goroutines leaked. Use it as the package's TestMain:
//
//	var kube *kubetest.Server
//
//	func TestMain(m *testing.M) { os.Exit(kubetest.RunMain(m, &kube)) }
//
//	func TestX(t *testing.T) {
//		kube.Require(t)
//		...
//	}
//
// Without the binary the tests run and Require skips them, unless
// MESHPLANE_REQUIRE_KUBE is set: then the run fails at once.
func RunMain(m *testing.M, srv **Server) int {
	bin, err := Find()
	if err != nil {
		if required() {
			fmt.Fprintf(os.Stderr, "kubetest: %v (MESHPLANE_REQUIRE_KUBE is set)\n", err)
			return 1
		}
		*srv = &Server{skip: err}
		return m.Run()
	}
	return etcdtest.RunMainWith(m, "kubetest", func(tb testing.TB) {
		etcd := etcdtest.Start(tb)
		s := start(tb, bin, []string{etcd.Endpoint()})
		s.Etcd = etcd
		*srv = s
	})
}
