package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

var (
	// ErrNoPEM is returned for input that holds no PEM block of the kind
	// asked for.
	ErrNoPEM = errors.New("no PEM block")
	// ErrExpired is returned by Remaining for a certificate past its
	// NotAfter.
	ErrExpired = errors.New("certificate has expired")
	// ErrNotYetValid is returned by Remaining for a certificate before
	// its NotBefore.
	ErrNotYetValid = errors.New("certificate is not valid yet")
)

// ParseCertificate returns the first CERTIFICATE block of certPEM,
// parsed. Other blocks before it (a key, say) are skipped; a bundle's
// later certificates are ignored.
func ParseCertificate(certPEM []byte) (*x509.Certificate, error) {
	rest := certPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%w of type CERTIFICATE: pass a PEM-encoded certificate (-----BEGIN CERTIFICATE-----)", ErrNoPEM)
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		return cert, nil
	}
}

// Expiry returns the NotAfter of the first certificate in certPEM.
func Expiry(certPEM []byte) (time.Time, error) {
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return time.Time{}, err
	}
	return cert.NotAfter, nil
}

// Remaining returns how long cert stays valid after now. Outside its
// validity it returns an error wrapping ErrExpired (with how long ago) or
// ErrNotYetValid (with when it starts), and the duration, negative once
// expired, so a status line can show either.
func Remaining(cert *x509.Certificate, now time.Time) (time.Duration, error) {
	left := cert.NotAfter.Sub(now)
	switch {
	case now.After(cert.NotAfter):
		return left, fmt.Errorf("certificate %q: %w: it expired at %s (%v ago): issue a new one",
			cert.Subject.CommonName, ErrExpired, cert.NotAfter.UTC().Format(time.RFC3339), (-left).Truncate(time.Second))
	case now.Before(cert.NotBefore):
		return left, fmt.Errorf("certificate %q: %w: it starts at %s (in %v): check this machine's clock",
			cert.Subject.CommonName, ErrNotYetValid, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotBefore.Sub(now).Truncate(time.Second))
	}
	return left, nil
}

// parseKey returns the first private key block of keyPEM: EC (SEC 1),
// PKCS #1 RSA or PKCS #8. An "EC PARAMETERS" block before it, as openssl
// ecparam writes, is skipped.
func parseKey(keyPEM []byte) (crypto.Signer, error) {
	rest := keyPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%w of type PRIVATE KEY: pass a PEM-encoded, unencrypted private key", ErrNoPEM)
		}
		if !strings.HasSuffix(block.Type, "PRIVATE KEY") {
			continue
		}
		var key any
		var err error
		switch block.Type {
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			return nil, fmt.Errorf("private key of type %q: pass an unencrypted EC, RSA or PKCS #8 key (openssl pkey -in KEY -out PLAIN)", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", strings.ToLower(block.Type), err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("private key of type %T cannot sign: pass an ECDSA, RSA or Ed25519 key", key)
		}
		return signer, nil
	}
}
