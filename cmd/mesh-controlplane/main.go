// Command mesh-controlplane watches Kubernetes and writes meshplane's
// desired state to etcd. Its flags are read in package cpcmd; the
// Kubernetes source is controlplane/k8s.
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
	code := cpcmd.Main(ctx, os.Args[1:], os.Stderr, func(kubeconfig, kubeContext string) (controlplane.Source, error) {
		return k8s.New(k8s.Config{Kubeconfig: kubeconfig, Context: kubeContext})
	})
	stop()
	os.Exit(code)
}
