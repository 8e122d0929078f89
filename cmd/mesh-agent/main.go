// Command mesh-agent is meshplane's node agent: one per node. Its flags,
// environment and config file are read in package agentcmd.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshplane/meshplane/cmd/mesh-agent/agentcmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := agentcmd.Main(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}
