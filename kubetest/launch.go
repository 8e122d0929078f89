package kubetest

import "errors"

// Launch starts a kube-apiserver outside a test (a benchmark harness, such
// as meshctl bench controlplane) against the etcd at etcdEndpoints, with
// its files (certificates, tokens, kubeconfig, log) in dir, and waits
// until it is ready. bin is the binary; empty means Find's. The caller
// calls Stop, and removes dir.
func Launch(bin, dir string, etcdEndpoints []string) (*Server, error) {
	if bin == "" {
		var err error
		if bin, err = Find(); err != nil {
			return nil, err
		}
	}
	if dir == "" {
		return nil, errors.New("kubetest: Launch needs a directory for the apiserver's files")
	}
	return start(bin, dir, etcdEndpoints)
}
