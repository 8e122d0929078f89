package kubetest

import "github.com/meshplane/meshplane/kubetest/apiserver"

// Version is the Kubernetes version tools/kube-apiserver/go.mod pins; the
// binary's cache path carries it, so a version change builds anew.
const Version = apiserver.Version

// ErrNotBuilt is returned by Find when there is no kube-apiserver binary.
var ErrNotBuilt = apiserver.ErrNotBuilt

// BuildCommand is the command that builds the binary Find looks for.
const BuildCommand = apiserver.BuildCommand

// CachePath is where `make kube-apiserver` puts the binary:
// ${MESHPLANE_CACHE:-$HOME/.cache/meshplane}/kube-apiserver-<Version>.
func CachePath() (string, error) { return apiserver.CachePath() }

// Find returns the path of the kube-apiserver binary: $MESHPLANE_KUBE_APISERVER
// if set, else CachePath. The error wraps ErrNotBuilt and says how to build it.
func Find() (string, error) { return apiserver.Find() }
