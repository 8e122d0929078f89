package cpbench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshplane/meshplane/kubeapiserver"
)

// apiClient talks to the apiserver as its admin, over HTTP/1.1 with one
// connection per concurrent client: no client-side rate limit.
type apiClient struct {
	host, token string
	http        *http.Client
}

func newAPIClient(s *kubeapiserver.Server, clients int) (*apiClient, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CAPEM) {
		return nil, errors.New("cpbench: the apiserver's CA is not PEM")
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: clients + 4,
		MaxConnsPerHost:     clients + 4,
	}
	return &apiClient{host: s.Host, token: s.AdminToken, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

func (c *apiClient) close() { c.http.CloseIdleConnections() }

func (c *apiClient) do(ctx context.Context, method, path, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.host+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("cpbench: %s %s: %w", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("cpbench: %s %s: %w", method, path, err)
	}
	return resp.StatusCode, b, nil
}

// create POSTs obj to path.
func (c *apiClient) create(ctx context.Context, path string, obj any) ([]byte, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	code, body, err := c.do(ctx, http.MethodPost, path, "application/json", b)
	if err != nil {
		return nil, err
	}
	if code != http.StatusCreated && code != http.StatusOK {
		return nil, fmt.Errorf("cpbench: create %s: %d %s", path, code, body)
	}
	return body, nil
}

// patchLabels merges labels into a pod's, as kubectl label does.
func (c *apiClient) patchLabels(ctx context.Context, namespace, name string, labels map[string]string) error {
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err != nil {
		return err
	}
	path := "/api/v1/namespaces/" + namespace + "/pods/" + name
	code, body, err := c.do(ctx, http.MethodPatch, path, "application/merge-patch+json", b)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("cpbench: patch %s: %d %s", path, code, body)
	}
	return nil
}

// watchCounts are the apiserver's open watches by resource.
type watchCounts map[string]int

// watches reads apiserver_longrunning_requests{verb="WATCH"} from /metrics.
func (c *apiClient) watches(ctx context.Context) (watchCounts, error) {
	code, body, err := c.do(ctx, http.MethodGet, "/metrics", "", nil)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("cpbench: GET /metrics: %d %s", code, body)
	}
	return parseWatches(body)
}

// parseWatches sums the WATCH series of apiserver_longrunning_requests by
// their resource label.
func parseWatches(metrics []byte) (watchCounts, error) {
	const name = "apiserver_longrunning_requests{"
	out := watchCounts{}
	sc := bufio.NewScanner(bytes.NewReader(metrics))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || !strings.Contains(rest, `verb="WATCH"`) {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return nil, fmt.Errorf("cpbench: /metrics: %q: %w", line, err)
		}
		out[labelValue(labels, "resource")] += int(v)
	}
	return out, sc.Err()
}

// labelValue returns the value of label k in a Prometheus label list.
func labelValue(labels, k string) string {
	_, v, ok := strings.Cut(labels, k+`="`)
	if !ok {
		return ""
	}
	v, _, _ = strings.Cut(v, `"`)
	return v
}

// minus returns the watches c has beyond before, in total and as
// "resource=n,..." by resource.
func (c watchCounts) minus(before watchCounts) (int, string) {
	total := 0
	var parts []string
	for res, n := range c {
		if d := n - before[res]; d != 0 {
			total += d
			parts = append(parts, fmt.Sprintf("%s=%d", res, d))
		}
	}
	sort.Strings(parts)
	return total, strings.Join(parts, ",")
}

func namespaceObject(name string) any {
	return map[string]any{
		"apiVersion": "v1", "kind": "Namespace",
		"metadata": map[string]any{"name": name, "labels": map[string]string{"bench": "cpbench"}},
	}
}

func serviceObject(namespace, name, app string) any {
	return map[string]any{
		"apiVersion": "v1", "kind": "Service",
		"metadata": map[string]any{"name": name, "namespace": namespace},
		"spec": map[string]any{
			"selector": map[string]string{"app": app},
			"ports":    []any{map[string]any{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}},
		},
	}
}

func podObject(namespace, name, node, app string) any {
	return map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": namespace, "labels": map[string]string{"app": app}},
		"spec": map[string]any{
			"nodeName": node,
			"containers": []any{map[string]any{
				"name": "app", "image": "registry.invalid/cpbench:1",
				"ports": []any{map[string]any{"name": "http", "containerPort": 8080, "protocol": "TCP"}},
			}},
		},
	}
}
