package kubenode

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// CNI is a network for the node: plugin binaries for containerd's CNI
// bin_dir and one network config for its conf_dir.
type CNI struct {
	// Plugins maps a plugin's name (its "type" in the config) to the
	// binary copied into the node's CNI bin dir. loopback, which
	// containerd calls for every pod's lo, is always there.
	Plugins map[string]string
	// ConfName is the config's file name in the conf dir, e.g.
	// 10-meshplane.conflist (containerd 1.6 loads the lexically first
	// file of the dir only: max_conf_num = 1).
	ConfName string
	// Conflist is the network config list (JSON).
	Conflist []byte
}

// Bridge is a network of Debian's standard plugins: a bridge in the
// node's namespace holding the pod range's first address (the pods'
// gateway, so that the kubelet reaches them for probes; their default
// route, so that they reach Service IPs the node's namespace translates),
// host-local IPAM on the range, no IP masquerade. The node's namespace
// has no route out of the machine, so nothing goes further. isGateway
// makes the bridge plugin set ip_forward, in the node's namespace only. A node's standard network is
// Node.StandardCNI.
type Bridge struct {
	// Network is the network's name (the conflist's "name"). Required.
	Network string
	// Bridge is the bridge interface's name. A second network needs a
	// bridge of its own: the plugin refuses a bridge that holds another
	// range's gateway. Required.
	Bridge string
	// PodCIDR is the pods' range. Required.
	PodCIDR netip.Prefix
	// IPAMDir holds host-local's state: one file per IP held. Required.
	IPAMDir string
	// ConfName is the config's file name; empty means
	// 10-<Network>.conflist.
	ConfName string
}

// CNI is the network as an InstallCNI argument.
func (b Bridge) CNI() CNI {
	gw := b.PodCIDR.Masked().Addr().Next()
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       b.Network,
		"plugins": []any{map[string]any{
			"type": "bridge", "bridge": b.Bridge, "isGateway": true, "isDefaultGateway": true, "ipMasq": false, "hairpinMode": true,
			"ipam": map[string]any{
				"type": "host-local", "dataDir": b.IPAMDir,
				"ranges": [][]map[string]string{{{"subnet": b.PodCIDR.Masked().String(), "gateway": gw.String()}}},
			},
		}},
	}
	js, _ := json.MarshalIndent(conf, "", "  ")
	name := b.ConfName
	if name == "" {
		name = "10-" + b.Network + ".conflist"
	}
	return CNI{
		Plugins: map[string]string{
			"bridge":     filepath.Join(StandardCNIDir, "bridge"),
			"host-local": filepath.Join(StandardCNIDir, "host-local"),
		},
		ConfName: name,
		Conflist: js,
	}
}

// StandardCNI is the node's standard network (Start installs it unless
// Config.NoCNI): bridge kn-br0 on Node.PodCIDR.
func (n *Node) StandardCNI() Bridge {
	return Bridge{Network: n.network, Bridge: "kn-br0", PodCIDR: n.PodCIDR, IPAMDir: n.dirs.ipam}
}

// InstallCNI puts c's plugins into the node's CNI bin dir (with
// loopback) and makes c's config the only one in its conf dir. The config
// is written in place, never renamed into the directory: containerd 1.6
// reloads on a write and ignores a file moved in. New pods use the new
// network within seconds; running pods keep theirs. While no config is
// there the node is NotReady.
func (n *Node) InstallCNI(c CNI) error {
	if c.ConfName == "" || strings.ContainsRune(c.ConfName, '/') || len(c.Conflist) == 0 {
		return fmt.Errorf("kubenode: InstallCNI: a config file name (no slashes) and a conflist are required")
	}
	var conf struct {
		Name    string
		Plugins []struct{ Type string }
	}
	if err := json.Unmarshal(c.Conflist, &conf); err != nil {
		return fmt.Errorf("kubenode: InstallCNI: conflist %s: %w", c.ConfName, err)
	}
	plugins := map[string]string{"loopback": filepath.Join(StandardCNIDir, "loopback")}
	for name, bin := range c.Plugins {
		plugins[name] = bin
	}
	for _, p := range conf.Plugins {
		if _, ok := plugins[p.Type]; !ok {
			if _, err := os.Stat(filepath.Join(n.dirs.cniBin, p.Type)); err != nil {
				return fmt.Errorf("kubenode: InstallCNI: conflist %s uses plugin %q, which neither CNI.Plugins nor the bin dir has", c.ConfName, p.Type)
			}
		}
	}
	for name, bin := range plugins {
		if err := copyFile(filepath.Join(n.dirs.cniBin, name), bin, 0o755); err != nil {
			return fmt.Errorf("kubenode: InstallCNI: plugin %s: %w", name, err)
		}
	}
	ents, err := os.ReadDir(n.dirs.cniConf)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() != c.ConfName {
			if err := os.Remove(filepath.Join(n.dirs.cniConf, e.Name())); err != nil {
				return err
			}
		}
	}
	// In place: O_TRUNC on the existing file, or a new one.
	return os.WriteFile(filepath.Join(n.dirs.cniConf, c.ConfName), c.Conflist, 0o644)
}

// copyFile copies src to dst (replacing it: a plugin binary may be in
// use, so it is removed first rather than written over).
func copyFile(dst, src string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }()
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}
