package cni

import (
	"strings"
	"testing"
)

// FuzzParseConf: the runtime's stdin never panics the plugin, and a
// configuration it accepts has an absolute socket and a positive timeout.
func FuzzParseConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"meshplane","type":"mesh-cni","socket":"/run/a.sock","timeout":"60s"}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","type":"mesh-cni","logFile":"/var/log/x","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	f.Add([]byte(`{"timeout":5}`))
	f.Add([]byte(`{"socket":"relative"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConf(b)
		if err != nil {
			return
		}
		if !strings.HasPrefix(c.Socket, "/") || c.Timeout <= 0 {
			t.Fatalf("accepted %q: socket %q, timeout %v", b, c.Socket, c.Timeout)
		}
	})
}

// FuzzParseArgs: CNI_ARGS never panics the plugin, and a pod it names has
// both a namespace and a name.
func FuzzParseArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc")
	f.Add("K8S_POD_NAMESPACE=shop")
	f.Add(";;=")
	f.Fuzz(func(t *testing.T, s string) {
		p, ok, err := parseArgs(s)
		if err == nil && ok && (p.namespace == "" || p.name == "") {
			t.Fatalf("parseArgs(%q) = %+v, ok", s, p)
		}
	})
}

// TestHostVethName: the host side's name fits IFNAMSIZ, is stable, and
// tells attachments apart.
func TestHostVethName(t *testing.T) {
	a, b := HostVethName("c1", "eth0"), HostVethName("c1", "eth1")
	if len(a) != 15 || a != HostVethName("c1", "eth0") || a == b || !strings.HasPrefix(a, HostVethPrefix) {
		t.Fatalf("HostVethName: %q, %q", a, b)
	}
	if cid, ifname, ok := parseAlias(attachmentAlias("c1", "eth0")); !ok || cid != "c1" || ifname != "eth0" {
		t.Fatalf("parseAlias(attachmentAlias) = %q %q %v", cid, ifname, ok)
	}
}
