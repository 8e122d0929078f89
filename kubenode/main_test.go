package kubenode_test

import (
	"testing"

	"go.uber.org/goleak"
)

// The node's goroutines (process waiters, the spawner's thread) end with
// its cleanup.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
