package kubenode

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// containerdConfig is `containerd config default` (Debian's 1.6) with
// the changes a private node needs (docs/development.md, "The real node"):
// its own root, state, socket, opt dir and runc state root; the cgroupfs
// driver (the default, checked); restrict_oom_score_adj, because this
// machine lacks CAP_SYS_RESOURCE; the pause image the node imports; and
// containerd's CNI bin_dir and conf_dir in the node's directory.
func containerdConfig(ctx context.Context, bin string, d dirs, sandboxImage string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "config", "default").Output()
	if err != nil {
		return "", fmt.Errorf("containerd config default: %w", err)
	}
	conf := string(out)
	for _, r := range [][2]string{
		{`root = "/var/lib/containerd"`, fmt.Sprintf("root = %q", d.containerdRoot)},
		{`state = "/run/containerd"`, fmt.Sprintf("state = %q", d.containerdState)},
		{`address = "/run/containerd/containerd.sock"`, fmt.Sprintf("address = %q", d.containerdSock)},
		{`restrict_oom_score_adj = false`, `restrict_oom_score_adj = true`},
		{`sandbox_image = "registry.k8s.io/pause:3.6"`, fmt.Sprintf("sandbox_image = %q", sandboxImage)},
		{`bin_dir = "/opt/cni/bin"`, fmt.Sprintf("bin_dir = %q", d.cniBin)},
		{`conf_dir = "/etc/cni/net.d"`, fmt.Sprintf("conf_dir = %q", d.cniConf)},
		{`path = "/opt/containerd"`, fmt.Sprintf("path = %q", d.containerdOpt)},
		{`            Root = ""`, fmt.Sprintf("            Root = %q", d.runcRoot)},
		{`            SystemdCgroup = false`, `            SystemdCgroup = false`},
	} {
		if n := strings.Count(conf, r[0]); n != 1 {
			return "", fmt.Errorf("containerd config default has %q %d times, not once: this harness knows Debian bookworm's containerd 1.6 (apt-get install containerd)", r[0], n)
		}
		conf = strings.Replace(conf, r[0], r[1], 1)
	}
	return conf, nil
}

// ctr runs Debian's ctr against the node's containerd in namespace ns.
func (n *Node) ctr(ctx context.Context, ns string, args ...string) ([]byte, error) {
	a := append([]string{"--address", n.dirs.containerdSock, "-n", ns}, args...)
	out, err := exec.CommandContext(ctx, n.bins.Ctr, a...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// criNamespace is the containerd namespace of the CRI (the kubelet's
// containers).
const criNamespace = "k8s.io"

// ImportImage imports a docker-archive tarball (package image writes
// them) into the node's containerd, where the kubelet finds it: pods
// that use it need imagePullPolicy: Never or IfNotPresent.
func (n *Node) ImportImage(ctx context.Context, tarball string) error {
	_, err := n.ctr(ctx, criNamespace, "images", "import", tarball)
	return err
}

// removeContainers kills and removes every container left in the CRI's
// namespace (the kubelet is stopped by then) and returns the network
// namespaces of the sandboxes, for the caller to remove: the CRI's
// StopPodSandbox, which would remove them, runs no more.
func (n *Node) removeContainers(ctx context.Context) ([]string, error) {
	out, err := n.ctr(ctx, criNamespace, "containers", "ls", "-q")
	if err != nil {
		return nil, err
	}
	var netnsPaths []string
	var errs []string
	for _, id := range strings.Fields(string(out)) {
		if info, err := n.ctr(ctx, criNamespace, "containers", "info", id); err == nil {
			var c struct {
				Spec struct {
					Linux struct {
						Namespaces []struct{ Type, Path string }
					}
				}
			}
			if json.Unmarshal(info, &c) == nil {
				for _, ns := range c.Spec.Linux.Namespaces {
					// A sandbox's namespace is a bind mount in /run/netns; a
					// container joins it by /proc/<pid>/ns/net, nothing to
					// remove.
					if ns.Type == "network" && (strings.HasPrefix(ns.Path, netnsDir+"/") || strings.HasPrefix(ns.Path, "/var/run/netns/")) {
						netnsPaths = append(netnsPaths, ns.Path)
					}
				}
			}
		}
		_, _ = n.ctr(ctx, criNamespace, "tasks", "kill", "-s", "SIGKILL", id)
		// tasks rm waits for the task to exit; -f kills it first.
		_, _ = n.ctr(ctx, criNamespace, "tasks", "rm", "-f", id)
		if _, err := n.ctr(ctx, criNamespace, "containers", "rm", id); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return netnsPaths, fmt.Errorf("remove containers: %s", strings.Join(errs, "; "))
	}
	return netnsPaths, nil
}

// killShims kills the containerd shims that serve the node's containerd
// (their command line names its socket) by PID, and removes their
// sockets: shims outlive containerd by design, and one that is killed
// leaves its socket, /run/containerd/s/<sha256 of address/namespace/id>
// (containerd 1.6's shim.SocketAddress).
func killShims(sock string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		flags := map[string]string{}
		for i := 0; i+1 < len(args); i++ {
			if strings.HasPrefix(args[i], "-") {
				flags[args[i]] = args[i+1]
			}
		}
		if flags["-address"] != sock {
			continue
		}
		_ = unix.Kill(pid, unix.SIGKILL)
		sum := sha256.Sum256([]byte(filepath.Join(sock, flags["-namespace"], flags["-id"])))
		_ = os.Remove(filepath.Join(shimDir, "s", hex.EncodeToString(sum[:])))
	}
}
