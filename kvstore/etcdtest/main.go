package etcdtest

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// RunMain starts one embedded etcd for a whole test binary, stores it in
// *srv, runs the tests, stops the server and fails the run if goroutines
// leaked. Use it as the package's TestMain:
//
//	var srv *etcdtest.Server
//
//	func TestMain(m *testing.M) { os.Exit(etcdtest.RunMain(m, &srv)) }
//
// Tests share the server and stay apart by cluster name (Cluster).
func RunMain(m *testing.M, srv **Server) int {
	return RunMainWith(m, "etcdtest", func(tb testing.TB) { *srv = Start(tb) })
}

// RunMainWith is RunMain for a test helper that starts more than the etcd
// (kubetest starts a kube-apiserver on it): setup gets a testing.TB whose
// Fatalf fails the run (reported under name) and whose cleanups run after
// the tests; then the tests run, and the run fails if goroutines leaked.
func RunMainWith(m *testing.M, name string, setup func(tb testing.TB)) int {
	tb := &mainTB{}
	code := func() (code int) {
		defer func() {
			if r := recover(); r != nil {
				fmt.Fprintln(os.Stderr, name+":", r)
				code = 1
			}
		}()
		setup(tb)
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

// mainTB is the testing.TB that RunMainWith's setup gets in TestMain, where there is
// none: failures panic (RunMain reports them), cleanups run at the end.
type mainTB struct {
	testing.TB
	cleanups []func()
	dirs     []string
}

func (m *mainTB) Helper()          {}
func (m *mainTB) Cleanup(f func()) { m.cleanups = append(m.cleanups, f) }
func (m *mainTB) TempDir() string {
	d, err := os.MkdirTemp("", "etcdtest-")
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
