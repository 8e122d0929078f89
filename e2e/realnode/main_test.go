package realnode_test

import (
	"testing"

	"go.uber.org/goleak"
)

// The node's and the agent client's goroutines end with their cleanups.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
