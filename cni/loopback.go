package cni

import (
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
)

// LoopbackType is the type of the runtime's loopback network: containerd
// and CRI-O run a plugin of this name on every sandbox before the pod's
// network, and fail the sandbox without it. mesh-cni is that plugin too
// when it runs under this name (Install links it as BinDir/loopback when
// the bin dir has none), so a node without the reference plugins works.
const LoopbackType = "loopback"

// AboutLoopback is what the loopback plugin says of itself.
const AboutLoopback = "loopback (mesh-cni): brings up the sandbox's lo"

// LoopbackFuncs returns the loopback plugin's commands: ADD brings lo up
// and reports its addresses, DEL takes it down (nothing for a netns that
// is gone), CHECK checks it is up; GC and STATUS have nothing to do.
func LoopbackFuncs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: loopbackAdd, Del: loopbackDel, Check: loopbackCheck,
		GC: func(*skel.CmdArgs) error { return nil }, Status: func(*skel.CmdArgs) error { return nil }}
}

func loopbackAdd(args *skel.CmdArgs) error {
	var netConf types.NetConf
	if err := json.Unmarshal(args.StdinData, &netConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "loopback: network configuration: "+err.Error(), "")
	}
	h, err := HandleAt(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "loopback: "+err.Error(), "")
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return Error(fmt.Errorf("loopback: %w", err))
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return Error(fmt.Errorf("loopback: %w", err))
	}
	addrs, err := h.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		return Error(fmt.Errorf("loopback: addresses of lo: %w", err))
	}
	zero := 0
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: "lo", Mac: "00:00:00:00:00:00", Sandbox: args.Netns}},
	}
	for _, a := range addrs {
		if a.IPNet == nil || a.IP.IsLinkLocalUnicast() {
			continue
		}
		res.IPs = append(res.IPs, &current.IPConfig{Interface: &zero, Address: net.IPNet{IP: a.IP, Mask: a.Mask}})
	}
	out, err := res.GetAsVersion(netConf.CNIVersion)
	if err != nil {
		return Error(fmt.Errorf("loopback: result for CNI %s: %w", netConf.CNIVersion, err))
	}
	return out.Print()
}

func loopbackDel(args *skel.CmdArgs) error {
	if args.Netns == "" {
		return nil
	}
	h, err := HandleAt(args.Netns)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // the sandbox is gone, and its lo with it
		}
		return Error(fmt.Errorf("loopback: %w", err))
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return nil
	}
	if err := h.LinkSetDown(lo); err != nil {
		return Error(fmt.Errorf("loopback: set lo down: %w", err))
	}
	return nil
}

func loopbackCheck(args *skel.CmdArgs) error {
	h, err := HandleAt(args.Netns)
	if err != nil {
		return Error(fmt.Errorf("loopback: %w", err))
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return Error(fmt.Errorf("loopback: %w", err))
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		return Error(fmt.Errorf("loopback: lo in %s is down", args.Netns))
	}
	return nil
}

// isMeshCNI reports whether the file at path is a mesh-cni binary (its
// Go build information names cmd/mesh-cni), of any version.
func isMeshCNI(path string) bool {
	bi, err := buildinfo.ReadFile(path)
	return err == nil && bi.Path == meshCNIPackage
}

// meshCNIPackage is mesh-cni's main package.
const meshCNIPackage = "github.com/meshplane/meshplane/cmd/mesh-cni"

// installLoopback makes BinDir/loopback the plugin at plugin (a hard link
// to it, put in place by a rename), unless the bin dir has a loopback
// plugin of its own, which stays. A loopback that is an older mesh-cni
// is replaced.
func installLoopback(binDir, plugin string) error {
	dst := filepath.Join(binDir, LoopbackType)
	if _, err := os.Lstat(dst); err == nil && !isMeshCNI(dst) {
		return nil
	}
	if same(plugin, dst) {
		return nil
	}
	tmp := filepath.Join(binDir, "."+LoopbackType+".meshplane.tmp")
	_ = os.Remove(tmp)
	if err := os.Link(plugin, tmp); err != nil {
		// A file system without hard links: a copy.
		if err := copyBinary(plugin, tmp); err != nil {
			return fmt.Errorf("loopback plugin: %w", err)
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("loopback plugin: %w", err)
	}
	return nil
}

// uninstallLoopback removes BinDir/loopback if it is mesh-cni's.
func uninstallLoopback(binDir string) error {
	dst := filepath.Join(binDir, LoopbackType)
	if !isMeshCNI(dst) {
		return nil
	}
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
