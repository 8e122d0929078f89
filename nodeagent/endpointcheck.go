package nodeagent

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// check is the agent's endpointHooks.check: what the node itself says
// against a new endpoint, found before anything is allocated or written.
//
//   - With the eBPF datapath, the host side of the veth (IfIndex) must be
//     an interface in the agent's network namespace: the programs are
//     attached to it, and an endpoint whose attach fails keeps the agent
//     degraded until it is deleted. The node MAC, if given, must be that
//     interface's address.
//   - The pod's network namespace (Netns), if given, must be a network
//     namespace file the agent sees.
func (a *Agent) check(spec EndpointSpec) error {
	if a.cfg.Datapath != DatapathNone && spec.IfIndex != 0 {
		// One link asked for (net.InterfaceByIndex reads every link of
		// the node: with hundreds of pods, a cost on every ADD).
		link, err := netlink.LinkByIndex(int(spec.IfIndex))
		if err != nil {
			return fmt.Errorf("%w: ifindex %d of %s: no such interface in the agent's network namespace: pass the ifindex of the host side of the pod's veth, as the agent sees it",
				ErrInvalidEndpoint, spec.IfIndex, spec.owner())
		}
		ifc := link.Attrs()
		if hw, err := net.ParseMAC(spec.NodeMAC); err == nil && ifc.HardwareAddr.String() != hw.String() {
			return fmt.Errorf("%w: node MAC %s of %s is not the address of ifindex %d (%s, %s): pass the host side's address, or leave it out",
				ErrInvalidEndpoint, spec.NodeMAC, spec.owner(), spec.IfIndex, ifc.Name, ifc.HardwareAddr)
		}
	}
	if spec.Netns != "" {
		var st unix.Statfs_t
		err := unix.Statfs(spec.Netns, &st)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("%w: netns %q of %s does not exist (in the agent's mount namespace): pass the pod's network namespace file",
				ErrInvalidEndpoint, spec.Netns, spec.owner())
		case err != nil:
			return fmt.Errorf("%w: netns %q of %s: %w", ErrInvalidEndpoint, spec.Netns, spec.owner(), err)
		case st.Type != unix.NSFS_MAGIC || !isNetns(spec.Netns):
			return fmt.Errorf("%w: netns %q of %s is not a network namespace: pass the pod's network namespace file (e.g. /var/run/netns/cni-...)",
				ErrInvalidEndpoint, spec.Netns, spec.owner())
		}
	}
	return nil
}

// isNetns reports whether the namespace file at path is a network
// namespace (not a mount or PID namespace, which are nsfs files too).
func isNetns(path string) bool {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer func() { _ = unix.Close(fd) }()
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	return err == nil && typ == unix.CLONE_NEWNET
}
