package v1alpha1

// `make generate` builds controller-gen from tools/controller-gen (its own
// module, pinned there) into bin/ and runs these: DeepCopy methods
// (zz_generated.deepcopy.go) and the CRD manifests (deploy/crds).
//
//go:generate ../../../../bin/controller-gen object paths=.
//go:generate ../../../../bin/controller-gen crd:crdVersions=v1 paths=. output:crd:artifacts:config=../../../../deploy/crds
