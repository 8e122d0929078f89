// Package cli holds meshctl's commands, built with cobra. main only wires
// signals to New(...).ExecuteContext; everything else is here, so tests can
// run a command with arguments against a real etcd and read its output.
//
// Flags and MESHPLANE_* environment variables are read here and nowhere
// else; the environment only supplies flag defaults.
//
// Goroutines: a command that allocates identities runs one agent (see
// agent.go) per simulated node: the allocator's Run goroutine, owned by the
// agent and stopped by agent.stop before the command returns. bench and
// demo start several and stop them all on every return path.
package cli
