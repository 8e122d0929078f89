// Package bpftest helps tests that need real eBPF maps.
package bpftest

import (
	"os"
	"testing"

	"github.com/meshplane/meshplane/bpf"
)

// Require skips the test where eBPF maps cannot be used here (not root, no
// bpffs at bpf.DefaultDir), with the reason; when MESHPLANE_REQUIRE_BPF is
// set (as in CI) it fails instead, so the tests cannot silently not run.
func Require(tb testing.TB) {
	tb.Helper()
	if err := bpf.CheckSupport(bpf.DefaultDir); err != nil {
		if os.Getenv("MESHPLANE_REQUIRE_BPF") != "" {
			tb.Fatalf("MESHPLANE_REQUIRE_BPF is set, but eBPF maps are not usable: %v", err)
		}
		tb.Skipf("needs eBPF maps (root or CAP_BPF, bpffs at %s): %v", bpf.DefaultDir, err)
	}
}
