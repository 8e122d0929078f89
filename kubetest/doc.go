// Package kubetest runs a real kube-apiserver for tests, the way httptest
// runs an HTTP server and etcdtest an etcd. The process is package
// kubeapiserver's (which binaries may link: it does not import testing);
// kubetest adds what tests need: TestMain wiring, skipping without the
// binary, users handed out one per test, grants and namespaces. The binary
// is built from the Go module proxy by `make kube-apiserver`
// (tools/kubernetes) into a cache outside the repository; Find locates
// it.
//
// A Server is one kube-apiserver process against an etcd it is given, under
// an etcd prefix of its own, on a free loopback port, with a serving
// certificate from a CA made for it, a static token file and a
// service-account key pair made for it. Authorization is RBAC: the admin
// user is in system:masters; the other users (NewUser) start with no
// permissions beyond those of system:authenticated, and tests give them
// some with Grant, so that permission errors can be tested for real.
// Admission runs the default plugins less ServiceAccount, which would need
// the controller manager's service accounts; no controllers run, so
// namespaces that are deleted stay Terminating and no Endpoints or
// EndpointSlices appear by themselves: tests write the objects they need.
//
// One apiserver per test binary is the usual set-up (RunMain in TestMain);
// tests share it and stay apart by namespace (Namespace) and by the names
// of cluster-wide objects. Without the binary the tests skip, naming the
// command that builds it, unless MESHPLANE_REQUIRE_KUBE is set (CI sets
// it): then they fail.
//
// kubetest speaks to the apiserver over plain HTTPS and JSON; it does not
// import client-go, which only controlplane/k8s does (tests may).
//
// Outside tests (bench/cpbench, under meshctl bench controlplane) use
// kubeapiserver.Start: kubetest is for _test files and test helpers only
// (deps_test.go).
//
// The process is started with a parent-death signal, so it dies with the
// test binary; Stop kills it by PID and its temp directory is removed.
package kubetest
