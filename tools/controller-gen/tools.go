//go:build tools

// Package controllergen pins controller-gen (sigs.k8s.io/controller-tools),
// which `make generate` runs to write the CRDs in deploy/crds and the
// DeepCopy methods of controlplane/k8s/apis/v1alpha1. It is its own module
// so that the main module does not take controller-tools' dependencies.
package controllergen

import _ "sigs.k8s.io/controller-tools/cmd/controller-gen"
