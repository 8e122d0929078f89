// Package meshplane is the root of the meshplane module: a networking
// control plane for large Kubernetes clusters and meshes of clusters. The
// code lives in the packages below; this package holds only tests that
// guard the module's shape (import boundaries).
package meshplane
