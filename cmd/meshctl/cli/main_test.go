package cli

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/meshplane/meshplane/kvstore/etcdtest"
)

// srv is the etcd most tests share; they stay apart by cluster name.
var srv *etcdtest.Server

func TestMain(m *testing.M) {
	tb := &mainTB{}
	srv = etcdtest.Start(tb)
	code := m.Run()
	tb.cleanup()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// mainTB lets TestMain start an etcdtest server, which wants a testing.TB.
type mainTB struct {
	testing.TB
	cleanups []func()
	dirs     []string
}

func (m *mainTB) Helper()          {}
func (m *mainTB) Cleanup(f func()) { m.cleanups = append(m.cleanups, f) }
func (m *mainTB) TempDir() string {
	d, err := os.MkdirTemp("", "meshctl-test-")
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
