// Package pki is a small certificate authority: it makes or loads a CA,
// issues server and client certificates signed by it, writes them to
// files and checks how long a certificate stays valid. It serves the
// one-machine set-ups (kubeapiserver's and kubenode's certificates,
// etcdtest's TLS etcd) and the mesh's CA, whose client certificates
// clusters use to read each other's etcd.
//
// Keys are ECDSA P-256; LoadCA also takes an RSA or Ed25519 CA key made
// elsewhere. Serial numbers are random 128-bit numbers, so two CAs or two
// runs never hand out the same one. A certificate's NotBefore lies
// ClockSkew in the past, so a peer whose clock is a little behind accepts
// it at once; its NotAfter is the moment of issue plus the requested
// validity, and never later than the CA's own NotAfter (Issue refuses,
// with ErrOutlivesCA, rather than shorten it silently).
//
// A CA issues only leaf certificates (its path length is zero), and a
// leaf is for serving, for client authentication or both (Usage); TLS
// peers check that usage, so a client certificate cannot serve.
//
// The package imports only the standard library and never testing, so
// binaries (meshctl) may link it; deps_test.go holds that line. Its
// values are safe for concurrent use: a CA is not changed after NewCA or
// LoadCA returns it.
package pki
