//go:build tools

// Package kubeapiserver pins the Kubernetes version whose kube-apiserver the
// tests run (see kubetest). It is its own module so that the main module does
// not take k8s.io/kubernetes's dependencies; build.sh builds the binary.
package kubeapiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
