package pki_test

import (
	"fmt"
	"time"

	"github.com/meshplane/meshplane/pki"
)

// A mesh CA issues each remote cluster a client certificate named after
// it; status reads how long one stays valid.
func Example() {
	ca, err := pki.NewCA(pki.Options{CommonName: "mesh CA"})
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := ca.Issue(pki.Request{CommonName: "cluster-b", Usage: pki.ClientAuth, Validity: 90 * 24 * time.Hour})
	if err != nil {
		fmt.Println(err)
		return
	}
	// p.WriteFiles("cluster-b.crt", "cluster-b.key") keeps them.
	cert, err := pki.ParseCertificate(p.CertPEM)
	if err != nil {
		fmt.Println(err)
		return
	}
	left, err := pki.Remaining(cert, time.Now())
	fmt.Println(cert.Subject.CommonName, "signed by", cert.Issuer.CommonName, "valid for about", left.Round(24*time.Hour), err)
	// Output: cluster-b signed by mesh CA valid for about 2160h0m0s <nil>
}
