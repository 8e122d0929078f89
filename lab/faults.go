package lab

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Faults of a node's agent, for tests and benchmarks of failure detection.
// StopAgent is the graceful one (SIGTERM: the agent announces a restart to
// the other nodes and exits); these are the others. Each signals the
// recorded PID only while it is still the lab's (its mark is there).

// KillAgent kills a node's agent with SIGKILL, as a crash or the OOM killer
// would, and waits until it has exited. The agent has no chance to tell
// the other nodes: they find out through gossip. StartAgent starts it
// again.
func (l *Lab) KillAgent(ctx context.Context, cluster, node string) error {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	l.mu.Lock()
	ns, err := l.st.node(cluster, node)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if !alive(ns.AgentPID, l.st.Dir) {
		return fmt.Errorf("node %s/%s: the agent is not running", cluster, node)
	}
	if err := unix.Kill(ns.AgentPID, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("node %s/%s: kill agent %d: %w", cluster, node, ns.AgentPID, err)
	}
	if !waitGone(ctx, ns.AgentPID, stopGrace) {
		return fmt.Errorf("node %s/%s: agent %d survived SIGKILL", cluster, node, ns.AgentPID)
	}
	l.mu.Lock()
	ns.AgentPID = 0
	l.mu.Unlock()
	return l.save()
}

// PauseAgent stops a node's agent with SIGSTOP: the process keeps its
// sockets (the kernel still completes TCP handshakes on its ports) but
// runs no instruction, as a process starved of CPU, stopped by a debugger
// or in a long stall would. ResumeAgent continues it. A paused agent must
// be resumed before Down can stop it gracefully (Down kills what does not
// exit).
func (l *Lab) PauseAgent(cluster, node string) error {
	return l.signalAgent(cluster, node, unix.SIGSTOP)
}

// ResumeAgent continues an agent PauseAgent stopped.
func (l *Lab) ResumeAgent(cluster, node string) error {
	return l.signalAgent(cluster, node, unix.SIGCONT)
}

func (l *Lab) signalAgent(cluster, node string, sig unix.Signal) error {
	l.mu.Lock()
	ns, err := l.st.node(cluster, node)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if !alive(ns.AgentPID, l.st.Dir) {
		return fmt.Errorf("node %s/%s: the agent is not running", cluster, node)
	}
	if err := unix.Kill(ns.AgentPID, sig); err != nil {
		return fmt.Errorf("node %s/%s: signal agent %d with %s: %w", cluster, node, ns.AgentPID, unix.SignalName(sig), err)
	}
	return nil
}
