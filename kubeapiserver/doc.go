// Package kubeapiserver sets up, runs and talks to a real kube-apiserver
// process on loopback for one-machine set-ups: the lab, benches and
// kubetest. It is not a test helper: it does not import testing, so
// binaries (meshctl lab, meshctl bench controlplane) may link it.
//
// The binary is built from the Go module proxy by `make kube-apiserver`
// (tools/kubernetes) into a cache outside the repository; Find locates
// it (CachePath, or $MESHPLANE_KUBE_APISERVER).
//
// Prepare writes what one apiserver needs into the directory the caller
// gives (Config.Dir): a CA and a serving certificate it signed, a
// service-account key pair, a static token file and the admin's
// kubeconfig. It returns a Setup: the flags for a process against the
// given etcd, under an etcd prefix of its own, on a free loopback port.
// It runs nothing, so a caller may run the process as it likes: the lab
// spawns it detached, to outlive `meshctl lab up`.
//
// Start is Prepare, then the process as a child with a parent-death
// signal (it dies with the process that started it), then a wait until
// /readyz answers; Stop kills it by PID. The caller removes Dir.
//
// Authorization is RBAC: the admin user (AdminUser) is in system:masters;
// the other users of the token file (Setup.Users, Server.Users) have no
// permissions beyond those of system:authenticated until someone grants
// them some. Admission runs the default plugins less ServiceAccount, which
// would need the controller manager's service accounts; no controllers
// run, so deleted namespaces stay Terminating and no Endpoints or
// EndpointSlices appear by themselves.
//
// Client is the admin's HTTPS+JSON client (Do; Apply, by server-side
// apply; Delete; WaitReady); an answer other than 2xx is a *StatusError
// (IsNotFound). Server.Request and Server.Create go through the same
// client, Request as any user of the token file. The package does not
// import client-go, which only controlplane/k8s does.
package kubeapiserver
