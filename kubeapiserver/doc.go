// Package kubeapiserver runs a real kube-apiserver process on loopback for
// one-machine set-ups (the lab, benches) and for kubetest. It is not a test
// helper: it does not import testing, so binaries (meshctl bench
// controlplane) may link it.
//
// The binary is built from the Go module proxy by `make kube-apiserver`
// (tools/kube-apiserver) into a cache outside the repository; Find locates
// it (CachePath, or $MESHPLANE_KUBE_APISERVER).
//
// Start runs one process against an etcd it is given, under an etcd prefix
// of its own, on a free loopback port, with a serving certificate from a CA
// made for it, a static token file and a service-account key pair made for
// it, all in the directory the caller gives (Config.Dir), and waits until
// /readyz answers. Authorization is RBAC: the admin user (AdminUser) is in
// system:masters; the other users of the token file (Users) have no
// permissions beyond those of system:authenticated until someone grants
// them some. Admission runs the default plugins less ServiceAccount, which
// would need the controller manager's service accounts; no controllers
// run, so deleted namespaces stay Terminating and no Endpoints or
// EndpointSlices appear by themselves.
//
// The package speaks to the apiserver over plain HTTPS and JSON (Request,
// Create); it does not import client-go, which only controlplane/k8s does.
//
// The process is started with a parent-death signal, so it dies with the
// process that started it; Stop kills it by PID. The caller removes Dir.
package kubeapiserver
