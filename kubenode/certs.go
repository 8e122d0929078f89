package kubenode

import (
	"net/netip"
	"path/filepath"
	"time"

	"github.com/meshplane/meshplane/pki"
)

// kubeletPKI is the kubelet side's certificates, apart from the
// apiserver's (package kubeapiserver makes those): a CA that signs the
// kubelet's serving certificate and the apiserver's client certificate
// for the kubelet (in system:masters, so the kubelet's webhook
// authorization lets exec, logs and port-forward through).
type kubeletPKI struct {
	caFile                      string
	servingCert, servingKey     string
	apiserverCert, apiserverKey string
}

// kubeletCertValidity is how long the kubelet's certificates stay valid:
// longer than any test's node lives. The CA lasts a day more, as a CA
// must outlive what it issues.
const kubeletCertValidity = 30 * 24 * time.Hour

func newKubeletPKI(dir, nodeName string, nodeIP netip.Addr) (kubeletPKI, error) {
	p := kubeletPKI{
		caFile:      filepath.Join(dir, "kubelet-ca.crt"),
		servingCert: filepath.Join(dir, "kubelet.crt"), servingKey: filepath.Join(dir, "kubelet.key"),
		apiserverCert: filepath.Join(dir, "apiserver-kubelet-client.crt"), apiserverKey: filepath.Join(dir, "apiserver-kubelet-client.key"),
	}
	ca, err := pki.NewCA(pki.Options{CommonName: "kubenode kubelet CA", Validity: kubeletCertValidity + 24*time.Hour})
	if err != nil {
		return p, err
	}
	if err := pki.WriteFile(p.caFile, ca.CertPEM(), 0o644); err != nil {
		return p, err
	}
	serving, err := ca.Issue(pki.Request{
		CommonName: nodeName,
		DNSNames:   []string{nodeName, "localhost"},
		IPs:        []netip.Addr{nodeIP, netip.AddrFrom4([4]byte{127, 0, 0, 1})},
		Usage:      pki.ServerAuth,
		Validity:   kubeletCertValidity,
	})
	if err != nil {
		return p, err
	}
	if err := serving.WriteFiles(p.servingCert, p.servingKey); err != nil {
		return p, err
	}
	client, err := ca.Issue(pki.Request{
		CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"},
		Usage: pki.ClientAuth, Validity: kubeletCertValidity,
	})
	if err != nil {
		return p, err
	}
	return p, client.WriteFiles(p.apiserverCert, p.apiserverKey)
}
