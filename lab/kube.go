package lab

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/kubeapiserver"
	"github.com/meshplane/meshplane/kvstore"
)

// A cluster with kubernetes: true runs on a real kube-apiserver: the lab
// starts one (on the cluster's etcd, under an etcd prefix of its own, on
// a loopback port) and a mesh-controlplane process that watches it and
// writes pods/, namespaces/, services/ and policies/ into etcd, as in
// production. The lab then plays the rest of Kubernetes: it creates the
// topology's namespaces, pods (spec.nodeName the lab node; since no
// kubelet runs, it sets their status once they are wired), services (the
// topology's ClusterIPs) and, as the EndpointSlice controller, one slice
// per service with the running pods its selector picks. syncKube does it,
// where a cluster without kubernetes syncs etcd in-process.

// kubeState is a kubernetes cluster's API server and control plane.
type kubeState struct {
	APIServer        kubeapiserver.Setup `json:"apiserver"`
	APIServerPID     int                 `json:"apiserverPID"`
	APIServerArgs    []string            `json:"apiserverArgs"`
	APIServerLog     string              `json:"apiserverLog"`
	ControlPlanePID  int                 `json:"controlplanePID"`
	ControlPlaneArgs []string            `json:"controlplaneArgs"`
	ControlPlaneLog  string              `json:"controlplaneLog"`
}

// fieldManager is the lab's field manager in server-side apply.
const fieldManager = "meshplane-lab"

// labAnnotation marks the objects the lab made (its value is the lab's
// name): the lab deletes only those. Pods' labels stay the topology's,
// since they are identity labels.
const labAnnotation = "meshplane.io/lab"

// kubeEtcdPrefix is the API server's etcd prefix, beside the cluster's
// meshplane keys.
func kubeEtcdPrefix(cluster string) string { return "/kube-apiserver/" + cluster }

// kubeBinaries fills in and checks ControlPlane and KubeAPIServer: only a
// lab with a kubernetes cluster needs them.
func (o *Options) kubeBinaries() error {
	if o.ControlPlane == "" {
		o.ControlPlane = filepath.Join(filepath.Dir(o.Meshctl), "mesh-controlplane")
	}
	if o.KubeAPIServer == "" {
		p, err := kubeapiserver.Find()
		if err != nil {
			return fmt.Errorf("a cluster with kubernetes: true needs kube-apiserver: %w", err)
		}
		o.KubeAPIServer = p
	}
	for _, b := range []*string{&o.ControlPlane, &o.KubeAPIServer} {
		abs, err := filepath.Abs(*b)
		if err != nil {
			return err
		}
		*b = abs
		if err := unix.Access(abs, unix.X_OK); err != nil {
			return fmt.Errorf("%s is not an executable (%w): build it (make build, make kube-apiserver) or name it", abs, err)
		}
	}
	return nil
}

// startKube starts a kubernetes cluster's API server and waits until it
// is ready, then its control plane.
func (l *Lab) startKube(ctx context.Context, c Cluster, cs *clusterState) error {
	dir := filepath.Join(l.clusterDir(c.Name), "kube")
	svcRange, err := c.serviceRange() // validated
	if err != nil {
		return err
	}
	ks := &kubeState{
		APIServerLog:    filepath.Join(dir, "kube-apiserver.log"),
		ControlPlaneLog: filepath.Join(dir, "mesh-controlplane.log"),
	}
	l.mu.Lock()
	cs.Kube = ks
	l.mu.Unlock()
	l.progress("cluster %s: kube-apiserver (service range %s)", c.Name, svcRange)
	// The port is picked free and may be taken before the API server
	// binds it: then try once more.
	for attempt := 0; ; attempt++ {
		// Prepare, not Start: the API server is spawned detached, to
		// outlive `meshctl lab up`.
		setup, err := kubeapiserver.Prepare(kubeapiserver.Config{
			Dir: filepath.Join(dir, "apiserver"), EtcdEndpoints: etcdConfig(cs).Endpoints,
			EtcdPrefix: kubeEtcdPrefix(c.Name), ServiceCIDR: svcRange,
		})
		if err != nil {
			return fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		args := append([]string{l.st.KubeAPIServer}, setup.Args...)
		pid, err := spawn(args, ks.APIServerLog)
		if err != nil {
			return fmt.Errorf("cluster %s: kube-apiserver: %w", c.Name, err)
		}
		l.mu.Lock()
		ks.APIServer, ks.APIServerArgs, ks.APIServerPID = setup, args, pid
		l.mu.Unlock()
		if err := l.save(); err != nil {
			return err
		}
		err = l.waitAPIServer(ctx, ks)
		if err == nil {
			break
		}
		if attempt == 0 && strings.Contains(logTail(ks.APIServerLog, 20), "address already in use") {
			_ = stopProc(ctx, pid, l.st.Dir, stopGrace)
			continue
		}
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	ks.ControlPlaneArgs = []string{
		l.st.ControlPlane,
		"--name=lab",
		"--cluster-name=" + c.Name,
		"--cluster-id=" + strconv.Itoa(c.ID),
		"--etcd-endpoints=unix://" + cs.EtcdSocket,
		"--kubeconfig=" + ks.APIServer.Kubeconfig,
		"--metrics-address=",
	}
	l.progress("cluster %s: mesh-controlplane", c.Name)
	pid, err := spawn(ks.ControlPlaneArgs, ks.ControlPlaneLog)
	if err != nil {
		return fmt.Errorf("cluster %s: mesh-controlplane: %w", c.Name, err)
	}
	l.mu.Lock()
	ks.ControlPlanePID = pid
	l.mu.Unlock()
	return l.save()
}

func (l *Lab) waitAPIServer(ctx context.Context, ks *kubeState) error {
	client, err := kubeapiserver.NewClient(ks.APIServer)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := client.WaitReady(ctx, func() bool { return exited(ks.APIServerPID) }); err != nil {
		return fmt.Errorf("%w; its log (%s) ends:\n%s", err, ks.APIServerLog, logTail(ks.APIServerLog, 10))
	}
	return nil
}

// kubeCluster returns the cluster's kubeState, nil for a cluster without
// kubernetes. mu is held.
func (s *state) kubeCluster(cluster string) *kubeState {
	cs, err := s.cluster(cluster)
	if err != nil {
		return nil
	}
	return cs.Kube
}

// Kubeconfig returns the admin kubeconfig of a kubernetes cluster's API
// server (for kubectl --kubeconfig, or client-go), or an error for a
// cluster without kubernetes.
func (l *Lab) Kubeconfig(cluster string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.st.cluster(cluster); err != nil {
		return "", err
	}
	ks := l.st.kubeCluster(cluster)
	if ks == nil {
		return "", fmt.Errorf("%w: cluster %s of lab %s does not run on Kubernetes (set kubernetes: true in its topology)", ErrNotFound, cluster, l.st.Name)
	}
	return ks.APIServer.Kubeconfig, nil
}

// kubeObjects is what a kubernetes cluster's API server should hold of
// the lab, as server-side apply configurations keyed by their URL path.
type kubeObjects struct {
	apply  []kubeObject // in order: namespaces first
	status []kubeObject // pods/status, after the pods
	// owned are the collections whose lab-made objects not in apply are
	// deleted.
	owned []string
}

type kubeObject struct {
	path string
	obj  map[string]any
}

// kubeDesired computes the API server's objects from the lab's state.
// mu is held.
func (s *state) kubeDesired(cluster string) (kubeObjects, error) {
	c, err := s.Topology.cluster(cluster)
	if err != nil {
		return kubeObjects{}, err
	}
	var out kubeObjects
	annotations := map[string]string{labAnnotation: s.Name}
	for _, ns := range c.Namespaces {
		out.apply = append(out.apply, kubeObject{"/api/v1/namespaces/" + ns.Name, map[string]any{
			"apiVersion": "v1", "kind": "Namespace",
			"metadata": map[string]any{"name": ns.Name, "labels": nonNil(ns.Labels), "annotations": annotations},
		}})
		out.owned = append(out.owned,
			"/api/v1/namespaces/"+ns.Name+"/pods",
			"/api/v1/namespaces/"+ns.Name+"/services",
			"/apis/discovery.k8s.io/v1/namespaces/"+ns.Name+"/endpointslices")
	}
	for _, p := range s.Pods {
		if p.Cluster != cluster {
			continue
		}
		var ports []map[string]any
		for _, port := range p.Ports {
			cp := map[string]any{"containerPort": port.Port, "protocol": cmp.Or(port.Protocol, "TCP")}
			if port.Name != "" {
				cp["name"] = port.Name
			}
			ports = append(ports, cp)
		}
		path := "/api/v1/namespaces/" + p.Namespace + "/pods/" + p.Name
		meta := map[string]any{"name": p.Name, "namespace": p.Namespace, "labels": nonNil(p.Labels), "annotations": annotations}
		out.apply = append(out.apply, kubeObject{path, map[string]any{
			"apiVersion": "v1", "kind": "Pod", "metadata": meta,
			"spec": map[string]any{
				"nodeName": p.Node,
				"containers": []map[string]any{{
					"name": "echo", "image": "meshplane.io/lab-echo", "ports": ports,
				}},
			},
		}})
		if p.IP.IsValid() {
			out.status = append(out.status, kubeObject{path + "/status", map[string]any{
				"apiVersion": "v1", "kind": "Pod",
				"metadata": map[string]any{"name": p.Name, "namespace": p.Namespace},
				"status": map[string]any{
					"phase": "Running", "podIP": p.IP.String(),
					"podIPs":     []map[string]any{{"ip": p.IP.String()}},
					"conditions": []map[string]any{{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}},
				},
			}})
		}
	}
	for _, spec := range c.Services {
		var ports, slicePorts []map[string]any
		for i, sp := range spec.Ports {
			name := labPortName(spec, i)
			ports = append(ports, map[string]any{"name": name, "port": sp.Port, "targetPort": sp.TargetPort, "protocol": sp.Protocol})
			slicePorts = append(slicePorts, map[string]any{"name": name, "port": sp.TargetPort, "protocol": sp.Protocol})
		}
		base := "/api/v1/namespaces/" + spec.Namespace + "/services/" + spec.Name
		out.apply = append(out.apply, kubeObject{base, map[string]any{
			"apiVersion": "v1", "kind": "Service",
			"metadata": map[string]any{"name": spec.Name, "namespace": spec.Namespace, "annotations": annotations},
			"spec": map[string]any{
				"type": "ClusterIP", "clusterIP": spec.ClusterIP, "clusterIPs": []string{spec.ClusterIP},
				"selector": spec.Selector, "ports": ports,
			},
		}})
		endpoints := []map[string]any{}
		for _, p := range s.backends(cluster, spec) {
			endpoints = append(endpoints, map[string]any{
				"addresses": []string{p.IP.String()}, "nodeName": p.Node,
				"conditions": map[string]any{"ready": true, "serving": true, "terminating": false},
				"targetRef":  map[string]any{"kind": "Pod", "namespace": p.Namespace, "name": p.Name},
			})
		}
		name := spec.Name + "-lab"
		out.apply = append(out.apply, kubeObject{"/apis/discovery.k8s.io/v1/namespaces/" + spec.Namespace + "/endpointslices/" + name, map[string]any{
			"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
			"metadata": map[string]any{
				"name": name, "namespace": spec.Namespace, "annotations": annotations,
				"labels": map[string]string{
					"kubernetes.io/service-name":             spec.Name,
					"endpointslice.kubernetes.io/managed-by": "lab.meshplane.io",
				},
			},
			"addressType": "IPv4", "endpoints": endpoints, "ports": slicePorts,
		}})
	}
	return out, nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// syncKube makes a kubernetes cluster's API server hold what the lab
// describes (kubeDesired): it applies every object and deletes the
// lab-made ones that are gone (pods at once: no kubelet would confirm a
// graceful deletion). The control plane carries it into etcd; the
// callers wait for the agents as with syncCluster.
func (l *Lab) syncKube(ctx context.Context, cluster string, ks *kubeState) error {
	l.mu.Lock()
	want, err := l.st.kubeDesired(cluster)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	client, err := kubeapiserver.NewClient(ks.APIServer)
	if err != nil {
		return fmt.Errorf("cluster %s: %w", cluster, err)
	}
	defer client.Close()
	keep := map[string]bool{}
	for _, o := range slices.Concat(want.apply, want.status) {
		if err := client.Apply(ctx, o.path, fieldManager, o.obj); err != nil {
			return fmt.Errorf("cluster %s: kube-apiserver: %w", cluster, err)
		}
		keep[o.path] = true
	}
	for _, coll := range want.owned {
		var list struct {
			Items []struct {
				Metadata struct {
					Name        string            `json:"name"`
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			} `json:"items"`
		}
		if err := client.Do(ctx, http.MethodGet, coll, "", nil, &list); err != nil {
			return fmt.Errorf("cluster %s: kube-apiserver: %w", cluster, err)
		}
		for _, it := range list.Items {
			path := coll + "/" + url.PathEscape(it.Metadata.Name)
			if keep[path] || it.Metadata.Annotations[labAnnotation] != l.st.Name {
				continue
			}
			if err := client.Delete(ctx, path+"?gracePeriodSeconds=0"); err != nil {
				return fmt.Errorf("cluster %s: kube-apiserver: %w", cluster, err)
			}
		}
	}
	return nil
}

// waitKubeSynced waits until the control plane has written the cluster's
// namespaces into etcd: then it watches the API server and leads.
func (l *Lab) waitKubeSynced(ctx context.Context, cluster string) error {
	l.mu.Lock()
	c, err := l.st.Topology.cluster(cluster)
	var names []string
	var ks *kubeState
	if err == nil {
		for _, ns := range c.Namespaces {
			names = append(names, ns.Name)
		}
		ks = l.st.kubeCluster(cluster)
	}
	l.mu.Unlock()
	if err != nil || ks == nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	return l.withEtcd(ctx, cluster, func(client *kvstore.Client, keys kvstore.Keys) error {
		for _, ns := range names {
			for {
				_, ok, err := client.Get(ctx, keys.Namespace(ns))
				if err == nil && ok {
					break
				}
				if exited(ks.ControlPlanePID) {
					return fmt.Errorf("cluster %s: mesh-controlplane exited; its log (%s) ends:\n%s", cluster, ks.ControlPlaneLog, logTail(ks.ControlPlaneLog, 10))
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("cluster %s: mesh-controlplane did not write namespaces/%s within %s (%w); see %s", cluster, ns, readyTimeout, errors.Join(ctx.Err(), err), ks.ControlPlaneLog)
				case <-time.After(pollInterval):
				}
			}
		}
		return nil
	})
}

// kubePIDs are the control planes' and the API servers' PIDs of a state,
// for Down.
func kubePIDs(st *state) (controlplanes, apiservers []int) {
	for _, c := range st.Clusters {
		if c.Kube != nil {
			controlplanes = append(controlplanes, c.Kube.ControlPlanePID)
			apiservers = append(apiservers, c.Kube.APIServerPID)
		}
	}
	return controlplanes, apiservers
}
