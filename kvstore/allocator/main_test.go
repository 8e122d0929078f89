package allocator

import (
	"fmt"
	"os"
	"testing"
)

// mainTB lets TestMain start an etcdtest server, which wants a testing.TB.
type mainTB struct {
	testing.TB
	cleanups []func()
	dirs     []string
}

func (m *mainTB) Helper()          {}
func (m *mainTB) Cleanup(f func()) { m.cleanups = append(m.cleanups, f) }
func (m *mainTB) TempDir() string {
	d, err := os.MkdirTemp("", "allocator-test-")
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
