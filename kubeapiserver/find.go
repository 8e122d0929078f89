package kubeapiserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Version is the Kubernetes version tools/kubernetes/go.mod pins; the
// binary's cache path carries it, so a version change builds anew.
const Version = "v1.37.2"

// ErrNotBuilt is returned by Find when there is no kube-apiserver binary.
var ErrNotBuilt = errors.New("kube-apiserver not built")

// BuildCommand is the command that builds the binary Find looks for.
const BuildCommand = "make kube-apiserver"

// CachePath is where `make kube-apiserver` puts the binary:
// ${MESHPLANE_CACHE:-$HOME/.cache/meshplane}/kube-apiserver-<Version>.
func CachePath() (string, error) { return ComponentPath("kube-apiserver") }

// ComponentPath is where tools/kubernetes/build.sh puts the Kubernetes
// component name (kubelet, kubectl, ...; `make kube-node` builds them):
// ${MESHPLANE_CACHE:-$HOME/.cache/meshplane}/<name>-<Version>.
func ComponentPath(name string) (string, error) {
	dir := os.Getenv("MESHPLANE_CACHE")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("%s cache: %w; set MESHPLANE_CACHE", name, err)
		}
		dir = filepath.Join(home, ".cache", "meshplane")
	}
	return filepath.Join(dir, name+"-"+Version), nil
}

// Find returns the path of the kube-apiserver binary: $MESHPLANE_KUBE_APISERVER
// if set, else CachePath. The error wraps ErrNotBuilt and says how to build it.
func Find() (string, error) {
	if p := os.Getenv("MESHPLANE_KUBE_APISERVER"); p != "" {
		if err := executable(p); err != nil {
			return "", fmt.Errorf("%w: MESHPLANE_KUBE_APISERVER=%s: %w", ErrNotBuilt, p, err)
		}
		return p, nil
	}
	p, err := CachePath()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNotBuilt, err)
	}
	if err := executable(p); err != nil {
		return "", fmt.Errorf("%w: no %s: run `%s` (or set MESHPLANE_KUBE_APISERVER)", ErrNotBuilt, p, BuildCommand)
	}
	return p, nil
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}
