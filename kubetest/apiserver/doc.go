// Package apiserver prepares and talks to a kube-apiserver process outside
// tests: the lab's `kubernetes: true` clusters run one (package kubetest
// is the test helper for tests). It does not import testing or client-go.
//
// Prepare writes what one apiserver needs into a directory (a CA and a
// serving certificate for 127.0.0.1, a service-account key pair, a static
// token file with one admin in system:masters, an admin kubeconfig) and
// returns the command line for it on a free loopback port; the caller
// starts the process as it likes (the lab detached, with its PID in its
// state file). WaitReady polls /readyz. Client is a small HTTPS+JSON
// client for the admin: server-side apply, delete, list.
//
// Find locates the binary `make kube-apiserver` builds, as kubetest.Find
// does.
package apiserver
