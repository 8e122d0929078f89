package kubetest

import "github.com/meshplane/meshplane/kubeapiserver"

// Version is the Kubernetes version tools/kubernetes/go.mod pins
// (kubeapiserver.Version).
const Version = kubeapiserver.Version

// ErrNotBuilt is returned by Find when there is no kube-apiserver binary.
var ErrNotBuilt = kubeapiserver.ErrNotBuilt

// BuildCommand is the command that builds the binary Find looks for.
const BuildCommand = kubeapiserver.BuildCommand

// CachePath is where `make kube-apiserver` puts the binary
// (kubeapiserver.CachePath).
func CachePath() (string, error) { return kubeapiserver.CachePath() }

// Find returns the path of the kube-apiserver binary (kubeapiserver.Find).
func Find() (string, error) { return kubeapiserver.Find() }
