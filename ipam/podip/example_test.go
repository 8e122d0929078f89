package podip_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
)

func Example() {
	dir, err := os.MkdirTemp("", "podip-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	// The node's CIDRs, as claimed in etcd.
	a, err := podip.Open(podip.Config{Dir: dir}, []netip.Prefix{netip.MustParsePrefix("10.192.7.0/29")})
	if err != nil {
		panic(err)
	}
	defer a.Close()
	fmt.Println("gateway:", podip.Gateway(netip.MustParsePrefix("10.192.7.0/29")))

	// CNI ADD, and ADD again for the same container: the same address.
	ip, _ := a.Allocate("default/web-0/3f9a", ipam.IPv4)
	again, _ := a.Allocate("default/web-0/3f9a", ipam.IPv4)
	fmt.Println("web-0:", ip, again)

	for i := 1; ; i++ {
		_, err := a.Allocate(fmt.Sprintf("default/web-%d/3f9a", i), ipam.IPv4)
		if errors.Is(err, podip.ErrFull) {
			// The agent claims another CIDR in etcd and adds it.
			if err := a.AddCIDR(netip.MustParsePrefix("10.192.7.8/29")); err != nil {
				panic(err)
			}
			break
		}
	}
	ip, _ = a.Allocate("default/web-9/3f9a", ipam.IPv4)
	fmt.Println("after AddCIDR:", ip)

	// CNI DEL, twice.
	fmt.Println(a.Release("default/web-0/3f9a"), a.Release("default/web-0/3f9a"))
	s := a.Stats().CIDRs[0]
	fmt.Printf("%s: %d used, %d quarantined, %d free\n", s.CIDR, s.Used, s.Quarantined, s.Free)
	// Output:
	// gateway: 10.192.7.1
	// web-0: 10.192.7.2 10.192.7.2
	// after AddCIDR: 10.192.7.10
	// <nil> <nil>
	// 10.192.7.0/29: 4 used, 1 quarantined, 0 free
}
