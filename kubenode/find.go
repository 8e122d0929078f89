package kubenode

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/meshplane/meshplane/kubeapiserver"
)

// Version is the Kubernetes version of the node's components
// (kubeapiserver.Version: tools/kubernetes/go.mod pins it).
const Version = kubeapiserver.Version

// BuildCommand builds the Kubernetes binaries Find looks for.
const BuildCommand = "make kube-node"

// ErrMissing is wrapped by Find's error when a binary is missing.
var ErrMissing = errors.New("kubenode: binaries missing")

// StandardCNIDir is where Debian's containernetworking-plugins puts the
// standard CNI plugins (bridge, host-local, loopback).
const StandardCNIDir = "/usr/lib/cni"

// Binaries are the programs a node runs.
type Binaries struct {
	// The Kubernetes components, built from the Go module proxy
	// (BuildCommand) into kubeapiserver.ComponentPath.
	APIServer, ControllerManager, Scheduler, Kubelet, Kubectl string
	// Debian's: etcd (etcd-server), containerd and ctr (containerd), runc
	// (runc).
	Etcd, Containerd, Ctr, Runc string
	// CNIDir holds the standard CNI plugins (containernetworking-plugins).
	CNIDir string
}

// Find locates every binary a node needs. The error wraps ErrMissing and
// says how to get what is missing.
func Find() (Binaries, error) {
	var b Binaries
	var missing []error
	for _, c := range []struct {
		dst  *string
		name string
	}{{&b.APIServer, "kube-apiserver"}, {&b.ControllerManager, "kube-controller-manager"},
		{&b.Scheduler, "kube-scheduler"}, {&b.Kubelet, "kubelet"}, {&b.Kubectl, "kubectl"}} {
		p, err := kubeapiserver.ComponentPath(c.name)
		if err == nil {
			err = executable(p)
		}
		if err != nil {
			missing = append(missing, fmt.Errorf("%s: %w (run `%s`)", c.name, err, BuildCommand))
			continue
		}
		*c.dst = p
	}
	for _, c := range []struct {
		dst       *string
		name, pkg string
	}{{&b.Etcd, "etcd", "etcd-server"}, {&b.Containerd, "containerd", "containerd"},
		{&b.Ctr, "ctr", "containerd"}, {&b.Runc, "runc", "runc"}} {
		p, err := exec.LookPath(c.name)
		if err != nil {
			missing = append(missing, fmt.Errorf("%s: not in PATH (apt-get install %s)", c.name, c.pkg))
			continue
		}
		*c.dst = p
	}
	b.CNIDir = StandardCNIDir
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if err := executable(filepath.Join(b.CNIDir, p)); err != nil {
			missing = append(missing, fmt.Errorf("CNI plugin %s: %w (apt-get install containernetworking-plugins)", p, err))
		}
	}
	if len(missing) > 0 {
		return b, fmt.Errorf("%w: %w", ErrMissing, errors.Join(missing...))
	}
	return b, nil
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

// RequireEnv makes a missing binary or privilege a failure instead of a
// skip (CI sets it).
const RequireEnv = "MESHPLANE_REQUIRE_KUBENODE"

// Require skips the test unless a node can run here (root, the binaries
// of Find), or fails it when MESHPLANE_REQUIRE_KUBENODE is set, and
// returns the binaries.
func Require(tb testing.TB) Binaries {
	tb.Helper()
	b, err := Find()
	if err == nil && os.Geteuid() != 0 {
		err = errors.New("kubenode: a node needs root")
	}
	if err != nil {
		if os.Getenv(RequireEnv) != "" {
			tb.Fatalf("%v (%s is set)", err, RequireEnv)
		}
		tb.Skipf("no Kubernetes node here: %v", err)
	}
	return b
}
