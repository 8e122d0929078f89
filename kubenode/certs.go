package kubenode

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
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

func newKubeletPKI(dir, nodeName string, nodeIP netip.Addr) (kubeletPKI, error) {
	p := kubeletPKI{
		caFile:      filepath.Join(dir, "kubelet-ca.crt"),
		servingCert: filepath.Join(dir, "kubelet.crt"), servingKey: filepath.Join(dir, "kubelet.key"),
		apiserverCert: filepath.Join(dir, "apiserver-kubelet-client.crt"), apiserverKey: filepath.Join(dir, "apiserver-kubelet-client.key"),
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubenode kubelet CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, err
	}
	if err := writePEM(p.caFile, "CERTIFICATE", caDER, 0o644); err != nil {
		return p, err
	}
	issue := func(serial int64, subj pkix.Name, usage x509.ExtKeyUsage, ips []net.IP, dns []string, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: subj,
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips, DNSNames: dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		kd, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		return writePEM(keyFile, "EC PRIVATE KEY", kd, 0o600)
	}
	if err := issue(2, pkix.Name{CommonName: nodeName}, x509.ExtKeyUsageServerAuth,
		[]net.IP{net.IP(nodeIP.AsSlice()), net.IPv4(127, 0, 0, 1)}, []string{nodeName, "localhost"},
		p.servingCert, p.servingKey); err != nil {
		return p, err
	}
	err = issue(3, pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		x509.ExtKeyUsageClientAuth, nil, nil, p.apiserverCert, p.apiserverKey)
	return p, err
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}
