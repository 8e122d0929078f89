package deploy_test

import (
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/meshplane/meshplane/cmd/mesh-agent/agentcmd"
	"github.com/meshplane/meshplane/cmd/mesh-controlplane/cpcmd"
)

// TestConfigsLoad feeds every rendered config file to the real binaries'
// loaders, as the pods would: the file the container's --config names,
// from the ConfigMap its volume mounts, with the environment the pod
// spec sets. The files it names (the gossip keyring, etcd's TLS files)
// must lie in a mounted Secret. What the daemons then use must agree
// with the rest of the manifests: the API socket with the readiness probe
// and the CNI's --socket, the bpffs with its mount, the two daemons' etcd
// and cluster (name and ID: each compares them with the cluster record in
// etcd) with each other and with the IPAM pool Job.
func TestConfigsLoad(t *testing.T) {
	for name, objs := range renders(t) {
		if strings.HasSuffix(name, "cleanup") {
			continue // no daemon
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			ds := find(t, objs, "DaemonSet", "mesh-agent")
			agent := container(t, ds, "mesh-agent")
			env := podEnv(t, agent)
			if env["MESHPLANE_NODE_NAME"] != "spec.nodeName" || env["MESHPLANE_NODE_IP"] != "status.hostIPs" {
				t.Errorf("agent environment %v: want the node's name and IPs from the pod", env)
			}
			t.Setenv("MESHPLANE_NODE_NAME", "node-1")
			t.Setenv("MESHPLANE_NODE_IP", "192.0.2.1,2001:db8::1")
			file, rendered := mountedConfig(t, objs, ds, agent, dir)
			cfg, _, err := agentcmd.Load([]string{"--config", file}, io.Discard)
			if err != nil {
				t.Fatalf("agentcmd.Load: %v", err)
			}
			if cfg.Node != "node-1" || len(cfg.NodeIPs) != 2 || len(cfg.GossipKeys) != 1 {
				t.Errorf("agent: node %q, IPs %v, %d gossip keys", cfg.Node, cfg.NodeIPs, len(cfg.GossipKeys))
			}
			mounts := mountPaths(agent)
			if run := mounts["run"]; filepath.Dir(cfg.APISocket) != run {
				t.Errorf("agent API socket %s is not in the run mount %s", cfg.APISocket, run)
			}
			if probe := get(agent, "readinessProbe", "exec", "command"); !slices.Contains(toStrings(probe), cfg.APISocket) {
				t.Errorf("readiness probe %v does not ask the agent's socket %s", probe, cfg.APISocket)
			}
			if cfg.BPF.Dir != mounts["bpffs"] {
				t.Errorf("agent bpffs %s, mounted at %s", cfg.BPF.Dir, mounts["bpffs"])
			}
			// mesh-cni runs on the host: its --socket is the host's path of
			// the socket.
			cni := toStrings(container(t, ds, "install-cni")["command"])
			hostRun := volumeOf(t, ds, "run")["hostPath"].(obj)["path"].(string)
			if want := filepath.Join(hostRun, filepath.Base(cfg.APISocket)); flagValue(cni, "--socket") != want {
				t.Errorf("mesh-cni install %v: --socket %q, want the host's %s", cni, flagValue(cni, "--socket"), want)
			}

			dep := find(t, objs, "Deployment", "mesh-controlplane")
			cp := container(t, dep, "mesh-controlplane")
			t.Setenv("MESHPLANE_NAME", "mesh-controlplane-0")
			cpFile, _ := mountedConfig(t, objs, dep, cp, dir)
			o, err := cpcmd.Load([]string{"--config", cpFile}, io.Discard)
			if err != nil {
				t.Fatalf("cpcmd.Load: %v", err)
			}
			if o.InstallCRDs {
				t.Error("the control plane installs the CRDs: the manifests do, and its RBAC does not allow it")
			}
			if o.ControlPlane.ClusterID != cfg.ClusterID {
				t.Errorf("control plane cluster ID %d, agents' %d: one of them would refuse to start against the cluster record the other wrote", o.ControlPlane.ClusterID, cfg.ClusterID)
			}
			if o.ControlPlane.Cluster != cfg.Cluster || !slices.Equal(o.Etcd.Endpoints, cfg.Etcd.Endpoints) ||
				o.Etcd.CAFile != cfg.Etcd.CAFile || o.Etcd.CertFile != cfg.Etcd.CertFile {
				t.Errorf("control plane cluster %q etcd %v %q; agent %q %v %q", o.ControlPlane.Cluster, o.Etcd.Endpoints, o.Etcd.CAFile,
					cfg.Cluster, cfg.Etcd.Endpoints, cfg.Etcd.CAFile)
			}
			if port := get(cp, "readinessProbe", "httpGet", "port"); !strings.HasSuffix(o.ControlPlane.MetricsAddr, ":"+strconv.Itoa(int(port.(float64)))) {
				t.Errorf("control plane metrics at %s, readiness probe on port %v", o.ControlPlane.MetricsAddr, port)
			}

			// The pool Job, where there is one, writes into the same etcd and
			// cluster, and the agents then wait for its pool.
			var job obj
			for _, o := range objs {
				if o["kind"] == "Job" {
					job = o
				}
			}
			if (job != nil) != cfg.NoDefaultPool {
				t.Errorf("pool Job: %v; agents without the default pool: %v", job != nil, cfg.NoDefaultPool)
			}
			if job != nil {
				args := toStrings(container(t, job, "meshctl")["args"])
				str := func(k string) string { s, _ := rendered[k].(string); return s }
				for flag, want := range map[string]string{
					"--etcd-endpoints": strings.Join(cfg.Etcd.Endpoints, ","), "--cluster-name": cfg.Cluster, "--cluster-id": strconv.Itoa(cfg.ClusterID),
					"--etcd-ca": str("etcd-ca"), "--etcd-cert": str("etcd-cert"), "--etcd-key": str("etcd-key"),
				} {
					if got := flagValue(args, flag); got != want {
						t.Errorf("pool Job %s=%q, the agents' %q", flag, got, want)
					}
				}
				if !slices.Contains(args, "--exist-ok") {
					t.Errorf("pool Job %v: without --exist-ok it fails when it runs again", args)
				}
			}
		})
	}
}

// mountedConfig writes the config file container reads (--config) from
// the ConfigMap workload mounts there, with the paths it names of mounted
// Secrets replaced by files in dir (the gossip keyring a valid one), and
// returns its path and the file as rendered.
func mountedConfig(t *testing.T, objs []obj, workload, c obj, dir string) (string, obj) {
	t.Helper()
	path := flagValue(toStrings(c["command"]), "--config")
	var cmName string
	for vol, at := range mountPaths(c) {
		if filepath.Dir(path) == at {
			cm, _ := volumeOf(t, workload, vol)["configMap"].(obj)
			if cm == nil {
				t.Fatalf("%s: --config %s is not in a ConfigMap volume", key(workload), path)
			}
			cmName = cm["name"].(string)
		}
	}
	if cmName == "" {
		t.Fatalf("%s: --config %s is not in a mounted volume", key(workload), path)
	}
	k, rendered := configFile(t, find(t, objs, "ConfigMap", cmName))
	file := deepCopy(rendered)
	if k != filepath.Base(path) {
		t.Fatalf("%s: --config %s, the ConfigMap's file is %s", key(workload), path, k)
	}
	for _, f := range []string{"gossip-key-file", "etcd-ca", "etcd-cert", "etcd-key"} {
		p, ok := file[f].(string)
		if !ok {
			continue
		}
		secret := ""
		for vol, at := range mountPaths(c) {
			if filepath.Dir(p) == at {
				if s, _ := volumeOf(t, workload, vol)["secret"].(obj); s != nil {
					secret, _ = s["secretName"].(string)
				}
			}
		}
		if secret == "" {
			t.Errorf("%s: %s %s is not in a mounted Secret", key(workload), f, p)
		}
		file[f] = filepath.Join(dir, f)
		if f == "gossip-key-file" {
			file[f] = gossipKeyFile(t, dir)
		}
	}
	return writeYAML(t, dir, strings.ReplaceAll(key(workload), "/", "_")+".yaml", file), rendered
}

// podEnv returns the container's environment: a value, or the field a
// fieldRef names.
func podEnv(t *testing.T, c obj) map[string]string {
	t.Helper()
	env := map[string]string{}
	list, _ := c["env"].([]any)
	for _, e := range list {
		e := e.(obj)
		if v, ok := e["value"].(string); ok {
			env[e["name"].(string)] = v
		} else if f, ok := get(e, "valueFrom", "fieldRef", "fieldPath").(string); ok {
			env[e["name"].(string)] = f
		}
	}
	return env
}

// mountPaths maps the container's volumes to where they are mounted.
func mountPaths(c obj) map[string]string {
	m := map[string]string{}
	list, _ := c["volumeMounts"].([]any)
	for _, vm := range list {
		vm := vm.(obj)
		m[vm["name"].(string)] = vm["mountPath"].(string)
	}
	return m
}

func volumeOf(t *testing.T, workload obj, name string) obj {
	t.Helper()
	vols, _ := get(workload, "spec", "template", "spec", "volumes").([]any)
	for _, v := range vols {
		if v := v.(obj); v["name"] == name {
			return v
		}
	}
	t.Fatalf("%s has no volume %s", key(workload), name)
	return nil
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, len(l))
	for i, s := range l {
		out[i], _ = s.(string)
	}
	return out
}

// flagValue returns the value of flag in args, as --flag value or
// --flag=value.
func flagValue(args []string, flag string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
