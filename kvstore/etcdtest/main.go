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
	tb := &mainTB{}
	code := func() (code int) {
		defer func() {
			if r := recover(); r != nil {
				fmt.Fprintln(os.Stderr, "etcdtest:", r)
				code = 1
			}
		}()
		*srv = Start(tb)
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

// mainTB is the testing.TB that Start gets in TestMain, where there is
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
