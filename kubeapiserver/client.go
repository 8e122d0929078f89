package kubeapiserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Client is the admin's HTTPS+JSON client of an apiserver: the one this
// package speaks through (it does not import client-go, which only
// controlplane/k8s does). Its methods may be called concurrently.
type Client struct {
	host, token string
	http        *http.Client
}

// NewClient returns the admin's client of the apiserver s describes. Its
// CA is s.CAPEM, or else read from s.CAFile. The caller calls Close.
func NewClient(s Setup) (*Client, error) { return NewClientDial(s, nil) }

// NewClientDial is NewClient with the client's connections made by dial
// (nil: the default dialer): kubenode's, which reaches an apiserver inside
// a network namespace of its own from outside it.
func NewClientDial(s Setup, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*Client, error) {
	ca := s.CAPEM
	if len(ca) == 0 {
		var err error
		if ca, err = os.ReadFile(s.CAFile); err != nil {
			return nil, fmt.Errorf("kubeapiserver: CA: %w", err)
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("kubeapiserver: CA %s: no PEM certificate", s.CAFile)
	}
	return &Client{host: s.Host, token: s.AdminToken, http: &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DialContext: dial},
		Timeout:   30 * time.Second,
	}}, nil
}

// Close closes the client's idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// StatusError is an answer of the apiserver other than success (2xx).
type StatusError struct {
	Method, Path string
	Code         int
	Body         string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Code, strings.TrimSpace(e.Body))
}

// IsNotFound reports whether err is a 404 of the apiserver.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Do sends method path as the admin, with body marshaled to JSON (none if
// nil) as contentType, and decodes a successful answer into out (unless
// nil). An answer that is not 2xx is a *StatusError.
func (c *Client) Do(ctx context.Context, method, path, contentType string, body, out any) error {
	code, b, err := c.send(ctx, c.token, method, path, contentType, body, true)
	if err != nil {
		return err
	}
	if code < 200 || code > 299 {
		return &StatusError{Method: method, Path: path, Code: code, Body: string(b)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("kubeapiserver: %s %s: %w", method, path, err)
		}
	}
	return nil
}

// Apply creates or updates the object at path (its URL, with its name)
// by server-side apply, as fieldManager, forcing conflicts.
func (c *Client) Apply(ctx context.Context, path, fieldManager string, obj any) error {
	return c.Do(ctx, http.MethodPatch, path+"?fieldManager="+url.QueryEscape(fieldManager)+"&force=true", "application/apply-patch+yaml", obj, nil)
}

// Delete deletes the object at path; one that is not there is no error.
func (c *Client) Delete(ctx context.Context, path string) error {
	err := c.Do(ctx, http.MethodDelete, path, "", nil, nil)
	if IsNotFound(err) {
		return nil
	}
	return err
}

// WaitReady polls /readyz until it answers ok, exited reports that the
// process has ended, or ctx ends.
func (c *Client) WaitReady(ctx context.Context, exited func() bool) error {
	for {
		err := c.Do(ctx, http.MethodGet, "/readyz", "", nil, nil)
		if err == nil {
			return nil
		}
		if exited() {
			return fmt.Errorf("kube-apiserver exited before it was ready (last /readyz: %w)", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready: %w (last /readyz: %w)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// send sends method path as the user of token, with body marshaled to
// JSON (none if nil) as contentType, and returns the answer's status code
// and body. acceptJSON asks for JSON.
func (c *Client) send(ctx context.Context, token, method, path, contentType string, body any, acceptJSON bool) (int, []byte, error) {
	var in io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, fmt.Errorf("kubeapiserver: %s %s: %w", method, path, err)
		}
		in = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.host+path, in)
	if err != nil {
		return 0, nil, fmt.Errorf("kubeapiserver: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if acceptJSON {
		req.Header.Set("Accept", "application/json")
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("kubeapiserver: %s %s: %w", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("kubeapiserver: %s %s: %w", method, path, err)
	}
	return resp.StatusCode, b, nil
}
