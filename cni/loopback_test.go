package cni_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/meshplane/meshplane/cni"
	"github.com/meshplane/meshplane/netnstest"
)

// TestLoopback: into a bin dir without a loopback plugin, install links
// mesh-cni as loopback, and the runtime's loopback network (through
// libcni, as containerd runs it) brings a sandbox's lo up, checks it and
// takes it down; DEL of a sandbox that is gone succeeds. An upgrade
// replaces the link; a bin dir's own loopback plugin is never touched;
// uninstall removes only ours.
func TestLoopback(t *testing.T) {
	dir := t.TempDir()
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	run := func(cmd string) {
		t.Helper()
		if out, err := exec.Command(pluginBin, cmd, "--bin-dir", bin, "--conf-dir", conf).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
	}
	same := func(a, b string) bool {
		sa, err1 := os.Stat(filepath.Join(bin, a))
		sb, err2 := os.Stat(filepath.Join(bin, b))
		return err1 == nil && err2 == nil && os.SameFile(sa, sb)
	}
	run("install")
	if !same("loopback", "mesh-cni") {
		t.Fatal("install did not link mesh-cni as loopback into a bin dir without one")
	}

	netconf, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"cni-loopback","plugins":[{"type":"loopback"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	lib := libcni.NewCNIConfig([]string{bin}, nil)
	ns := netnstest.New(t)
	rt := &libcni.RuntimeConf{ContainerID: "loopbacktest", NetNS: ns.Path(), IfName: "lo", CacheDir: t.TempDir()}
	ctx := context.Background()
	loUp := func() bool {
		t.Helper()
		lo, err := ns.Netlink().LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		return lo.Attrs().Flags&net.FlagUp != 0
	}
	// (netnstest brings lo up; a runtime's new sandbox has it down.)
	if lo, err := ns.Netlink().LinkByName("lo"); err != nil || ns.Netlink().LinkSetDown(lo) != nil || loUp() {
		t.Fatalf("cannot set lo down before ADD: %v", err)
	}
	res, err := lib.AddNetworkList(ctx, netconf, rt)
	if err != nil {
		t.Fatalf("loopback ADD: %v", err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Interfaces) != 1 || r.Interfaces[0].Name != "lo" || r.Interfaces[0].Sandbox != ns.Path() || len(r.IPs) == 0 || r.IPs[0].Address.String() != "127.0.0.1/8" {
		t.Fatalf("loopback ADD result: %s", r)
	}
	if !loUp() {
		t.Fatal("lo is down after ADD")
	}
	if err := lib.CheckNetworkList(ctx, netconf, rt); err != nil {
		t.Fatalf("loopback CHECK: %v", err)
	}
	if err := lib.DelNetworkList(ctx, netconf, rt); err != nil {
		t.Fatalf("loopback DEL: %v", err)
	}
	if loUp() {
		t.Fatal("lo is up after DEL")
	}
	gone := *rt
	gone.NetNS = filepath.Join(dir, "no-such-netns")
	if err := lib.DelNetworkList(ctx, netconf, &gone); err != nil {
		t.Fatalf("loopback DEL without the netns: %v", err)
	}

	// An upgrade: a new mesh-cni (another file) replaces the link.
	b, err := os.ReadFile(pluginBin)
	if err != nil {
		t.Fatal(err)
	}
	newer := filepath.Join(dir, "mesh-cni-newer")
	if err := os.WriteFile(newer, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(newer, "install", "--bin-dir", bin, "--conf-dir", conf).CombinedOutput(); err != nil {
		t.Fatalf("install the newer: %v\n%s", err, out)
	}
	if !same("loopback", "mesh-cni") {
		t.Fatal("after an upgrade, loopback is not the new mesh-cni")
	}
	run("uninstall")
	if _, err := os.Lstat(filepath.Join(bin, "loopback")); !os.IsNotExist(err) {
		t.Fatalf("our loopback after uninstall: %v", err)
	}

	// The bin dir's own loopback stays, through install and uninstall.
	own := filepath.Join(bin, cni.LoopbackType)
	if err := os.WriteFile(own, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	run("install")
	run("uninstall")
	if got, err := os.ReadFile(own); err != nil || string(got) != "#!/bin/sh\nexit 0\n" {
		t.Fatalf("the bin dir's own loopback after install and uninstall: %q, %v", got, err)
	}
}
