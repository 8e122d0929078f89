// Command mesh-controlplane is meshplane's control plane: one per cluster
// (leader-elected when replicated). It watches the Kubernetes API server
// and writes what agents need into etcd. Its flags, environment and config
// file are read in package cpcmd.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshplane/meshplane/cmd/mesh-controlplane/cpcmd"
	"github.com/meshplane/meshplane/controlplane"
	"github.com/meshplane/meshplane/controlplane/k8s"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cpcmd.Main(ctx, os.Args[1:], os.Stderr, kubeSource)
	stop()
	os.Exit(code)
}

// kubeSource is the production source: Kubernetes informers.
func kubeSource(kubeconfig, kubeContext string, installCRDs bool) (controlplane.Source, error) {
	return k8s.New(k8s.Config{Kubeconfig: kubeconfig, Context: kubeContext, SkipCRDInstall: !installCRDs})
}
