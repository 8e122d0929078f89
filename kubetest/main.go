package kubetest

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

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
	tb := &mainTB{}
	code := func() (code int) {
		defer func() {
			if r := recover(); r != nil {
				fmt.Fprintln(os.Stderr, "kubetest:", r)
				code = 1
			}
		}()
		etcd := etcdtest.Start(tb)
		s := start(tb, bin, []string{etcd.Endpoint()})
		s.Etcd = etcd
		*srv = s
		return m.Run()
	}()
	tb.cleanup()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}

// mainTB is the testing.TB that the servers get in TestMain, where there
// is none: failures panic (RunMain reports them), cleanups run at the end.
type mainTB struct {
	testing.TB
	cleanups []func()
	dirs     []string
}

func (m *mainTB) Helper()          {}
func (m *mainTB) Cleanup(f func()) { m.cleanups = append(m.cleanups, f) }
func (m *mainTB) TempDir() string {
	d, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		m.Fatalf("temp dir: %v", err)
	}
	m.dirs = append(m.dirs, d)
	return d
}
func (m *mainTB) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (m *mainTB) Skipf(format string, args ...any)  { panic(fmt.Sprintf(format, args...)) }

func (m *mainTB) cleanup() {
	for i := len(m.cleanups) - 1; i >= 0; i-- {
		m.cleanups[i]()
	}
	for _, d := range m.dirs {
		_ = os.RemoveAll(d)
	}
}
