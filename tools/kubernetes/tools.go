//go:build tools

// Package kubernetes pins the Kubernetes version whose binaries the tests
// run: kube-apiserver (kubetest) and the node's kubelet,
// kube-controller-manager, kube-scheduler and kubectl (kubenode), and the upstream e2e suite
// (e2e.test) with its test image's binary (agnhost) for the NetworkPolicy
// conformance run on a real node. It is its
// own module so that the main module does not take k8s.io/kubernetes's
// dependencies; build.sh builds the binaries.
package kubernetes

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
