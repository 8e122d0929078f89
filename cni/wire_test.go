package cni_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"

	"github.com/meshplane/meshplane/cni"
	"github.com/meshplane/meshplane/netnstest"
)

// TestWireDualStack wires a pod with an IPv4 and an IPv6 address between a
// host and a pod namespace, then sends real traffic both ways: the pod
// reaches an address of the host's (through its default routes and the
// gateways' permanent neighbour entries), and the host's answer reaches the
// pod (through the host routes to the pod and its neighbour entries).
// Remove takes it all away, and may be repeated.
func TestWireDualStack(t *testing.T) {
	host, podNS := netnstest.New(t), netnstest.New(t)
	v, err := cni.CreateVeth(cni.VethSpec{HostNetns: host.Path(), HostName: "mptest0", PodNetns: podNS.Path(), PodIfName: "eth0", MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	ips := []cni.PodIP{
		{IP: netip.MustParseAddr("10.77.0.5"), Gateway: netip.MustParseAddr("10.77.0.1")},
		{IP: netip.MustParseAddr("fd77::5"), Gateway: netip.MustParseAddr("fd77::1")},
	}
	if err := cni.ConfigurePod(podNS.Path(), "eth0", ips, v.HostMAC); err != nil {
		t.Fatal(err)
	}
	if err := cni.RouteToPod(host.Path(), "mptest0", []netip.Addr{ips[0].IP, ips[1].IP}, v.PodMAC); err != nil {
		t.Fatal(err)
	}
	// The host's own addresses, on its loopback.
	host.AddAddr(t, "lo", netip.MustParsePrefix("10.77.255.1/32"))
	host.AddAddr(t, "lo", netip.MustParsePrefix("fd77:ffff::1/128"))
	for _, dst := range []string{"10.77.255.1", "fd77:ffff::1"} {
		ln := host.Listen(t, "tcp", net.JoinHostPort(dst, "7000"))
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(c.RemoteAddr().String()))
			_ = c.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := podNS.Dial(ctx, net.Dialer{}, "tcp", net.JoinHostPort(dst, "7000"))
		cancel()
		if err != nil {
			t.Fatalf("pod to host %s: %v", dst, err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		_ = c.Close()
		if err != nil {
			t.Fatalf("pod to host %s: read: %v", dst, err)
		}
		want := ips[0].IP.String()
		if strings.Contains(dst, ":") {
			want = ips[1].IP.String()
		}
		if ap, err := netip.ParseAddrPort(string(b)); err != nil || ap.Addr() != netip.MustParseAddr(want) {
			t.Fatalf("host %s saw the pod as %q, want %s", dst, b, want)
		}
	}
	// Addresses are host routes; the MTU is set; IPv6 has no DAD.
	eth, err := podNS.Netlink().LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth.Attrs().MTU != 1400 {
		t.Errorf("pod MTU %d, want 1400", eth.Attrs().MTU)
	}
	addrs, err := podNS.Netlink().AddrList(eth, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range addrs {
		if a.IPNet.String() == "fd77::5/128" {
			found = true
			if a.Flags&syscall.IFA_F_TENTATIVE != 0 {
				t.Errorf("fd77::5 is tentative: DAD ran")
			}
		}
	}
	if !found {
		t.Errorf("pod IPv6 addresses %v lack fd77::5/128", addrs)
	}
	if err := cni.SetMTU(host.Path(), podNS.Path(), v, 1300); err != nil {
		t.Fatal(err)
	}
	if l := host.Link(t, "mptest0"); l.Index != v.HostIndex {
		t.Fatalf("host side index %d, want %d", l.Index, v.HostIndex)
	}
	for range 2 {
		if err := cni.Remove(host.Path(), "mptest0"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := podNS.Netlink().LinkByName("eth0"); err == nil {
		t.Fatal("the pod side outlived Remove")
	}
}

// TestCreateVethExists: a taken host name is ErrVethExists, and the
// existing interface is left alone.
func TestCreateVethExists(t *testing.T) {
	host, podNS, other := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	if _, err := cni.CreateVeth(cni.VethSpec{HostNetns: host.Path(), HostName: "mptest1", PodNetns: podNS.Path(), PodIfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	_, err := cni.CreateVeth(cni.VethSpec{HostNetns: host.Path(), HostName: "mptest1", PodNetns: other.Path(), PodIfName: "eth0"})
	if err == nil || !strings.Contains(err.Error(), cni.ErrVethExists.Error()) {
		t.Fatalf("second CreateVeth = %v, want ErrVethExists", err)
	}
	host.Link(t, "mptest1")
}

// TestInstall runs `mesh-cni install` and `uninstall` as the init
// container does: the binary lands in the bin dir, libcni (the runtime's
// library) loads the conflist, a second install with other flags rewrites
// it in place (the same inode: containerd 1.6 ignores renamed files), and
// uninstall removes both.
func TestInstall(t *testing.T) {
	dir := t.TempDir()
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	install := func(args ...string) {
		t.Helper()
		out, err := exec.Command(pluginBin, append([]string{"install", "--bin-dir", bin, "--conf-dir", conf}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("install %v: %v\n%s", args, err, out)
		}
	}
	install("--socket", "/run/test/agent.sock", "--log-file", "/var/log/mesh-cni.log")
	st, err := os.Stat(filepath.Join(bin, "mesh-cni"))
	if err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("installed binary: %v, mode %v", err, st)
	}
	path := filepath.Join(conf, cni.DefaultConfName)
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatalf("libcni: %v", err)
	}
	if list.Name != "meshplane" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "mesh-cni" {
		t.Fatalf("conflist %s: %+v", list.Bytes, list)
	}
	var pc cni.NetConf
	if err := json.Unmarshal(list.Plugins[0].Bytes, &pc); err != nil || pc.Socket != "/run/test/agent.sock" || pc.LogFile != "/var/log/mesh-cni.log" {
		t.Fatalf("plugin conf %s: %+v (%v)", list.Plugins[0].Bytes, pc, err)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	install("--socket", "/run/other/agent.sock", "--timeout", "90s")
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if before.Sys().(*syscall.Stat_t).Ino != after.Sys().(*syscall.Stat_t).Ino {
		t.Fatal("the second install replaced the conflist's file instead of writing it in place")
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), "/run/other/agent.sock") || !strings.Contains(string(b), `"1m30s"`) {
		t.Fatalf("conflist after the second install:\n%s", b)
	}
	// Shorter than the first: cut to length, nothing of the old left.
	if _, err := libcni.ConfListFromFile(path); err != nil {
		t.Fatalf("libcni after the second install: %v\n%s", err, b)
	}
	if out, err := exec.Command(pluginBin, "install", "--bin-dir", bin).CombinedOutput(); err == nil || !strings.Contains(string(out), "--conf-dir") {
		t.Fatalf("install without --conf-dir = %v: %s", err, out)
	}
	if out, err := exec.Command(pluginBin, "uninstall", "--bin-dir", bin, "--conf-dir", conf).CombinedOutput(); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	for _, p := range []string{path, filepath.Join(bin, "mesh-cni")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after uninstall: %v", p, err)
		}
	}
}

// TestInstallOverLonger: a conflist longer than the new one is written
// over from the start and cut to length (writeInPlace never truncates
// first: containerd 1.6 would read the empty file), and libcni loads the
// result.
func TestInstallOverLonger(t *testing.T) {
	dir := t.TempDir()
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	if err := os.Mkdir(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(conf, cni.DefaultConfName)
	if err := os.WriteFile(path, []byte(strings.Repeat(" ", 4096)+"{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(pluginBin, "install", "--bin-dir", bin, "--conf-dir", conf).CombinedOutput()
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) || after.Size() >= 4096 {
		t.Fatalf("conflist: same file %v, %d bytes; want the same file, cut", os.SameFile(before, after), after.Size())
	}
	if _, err := libcni.ConfListFromFile(path); err != nil {
		b, _ := os.ReadFile(path)
		t.Fatalf("libcni: %v\n%q", err, b)
	}
}
