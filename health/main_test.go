package health

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines leak. memberlist's goroutines stop
// shortly after Shutdown (a probe under way finishes its interval first)
// and it offers no way to wait for them, so the check polls for a while.
//
// Run with childEnv set, the test binary is a member process for the tests
// that signal one (process_test.go), not a test run.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	code := m.Run()
	if code == 0 {
		var err error
		for deadline := time.Now().Add(20 * time.Second); ; {
			if err = goleak.Find(); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
