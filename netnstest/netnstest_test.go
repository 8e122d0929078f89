package netnstest_test

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/netnstest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Two namespaces joined by a veth pair: a TCP listener in one answers a
// dial from the other, and each namespace sees only its own interfaces.
func TestVethListenDial(t *testing.T) {
	a, b := netnstest.New(t), netnstest.New(t)
	if a.Name() == b.Name() || !strings.HasPrefix(a.Name(), "mpt-") {
		t.Fatalf("names %q and %q: want distinct mpt- names", a.Name(), b.Name())
	}
	if _, err := os.Stat(a.Path()); err != nil {
		t.Fatalf("namespace mount: %v", err)
	}
	la, lb := netnstest.Veth(t, a, "va", b, "vb")
	if la.Index == 0 || lb.Index == 0 || len(la.MAC) != 6 {
		t.Fatalf("links %+v %+v", la, lb)
	}
	a.AddAddr(t, "va", netip.MustParsePrefix("10.250.0.1/32"))
	b.AddAddr(t, "vb", netip.MustParsePrefix("10.250.0.2/32"))
	a.AddRoute(t, netip.MustParsePrefix("10.250.0.2/32"), "va", netip.Addr{})
	b.AddRoute(t, netip.MustParsePrefix("10.250.0.1/32"), "vb", netip.Addr{})
	a.AddNeigh(t, "va", netip.MustParsePrefix("10.250.0.2/32").Addr(), lb.MAC)
	b.Sysctl(t, "net.ipv4.conf.all.rp_filter", "0")

	l := b.Listen(t, "tcp4", "10.250.0.2:7000")
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil {
			_, err = c.Write([]byte("echo " + line))
		}
		done <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := a.Dial(ctx, net.Dialer{}, "tcp4", "10.250.0.2:7000")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hi\n")); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "echo hi\n" {
		t.Fatalf("read %q, %v; want %q", got, err, "echo hi\n")
	}
	if err := <-done; err != nil {
		t.Fatalf("server: %v", err)
	}

	// Each namespace has its own interfaces: vb is not in a.
	if _, err := a.Netlink().LinkByName("vb"); err == nil {
		t.Error("vb is visible in a's namespace")
	}
	out, err := a.Exec(ctx, "ip", "-o", "link", "show", "va")
	if err != nil || !strings.Contains(string(out), "va@") {
		t.Errorf("ip link show va in a: %q, %v", out, err)
	}
	// Do leaves the calling goroutine's namespace alone.
	if _, err := net.InterfaceByName("va"); err == nil {
		t.Error("va is visible outside its namespace")
	}
}
