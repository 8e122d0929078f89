package kubenode

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshplane/meshplane/internal/netnsfile"
)

// Host paths that the kubelet, containerd's CNI and the shims use
// whatever the node's directories say (docs/development.md, the walls):
// the node removes what it made in them, and each directory only if it
// made the directory and it is empty then.
const (
	devicePluginDir = "/var/lib/kubelet/device-plugins" // kubelet.sock: a constant in the kubelet
	kubeletDir      = "/var/lib/kubelet"
	containerLogDir = "/var/log/containers" // symlinks into podLogsDir
	cniCacheDir     = "/var/lib/cni"        // libcni's results cache, one file per attachment
	shimDir         = "/run/containerd"     // the 1.6 shims' sockets, /run/containerd/s/<hash>
	netnsDir        = "/run/netns"
)

// hostDirs records which of those directories existed before the node
// started.
type hostDirs map[string]bool

func snapshotHostDirs() hostDirs {
	h := hostDirs{}
	for _, d := range []string{devicePluginDir, kubeletDir, containerLogDir, cniCacheDir,
		filepath.Join(cniCacheDir, "results"), shimDir, filepath.Join(shimDir, "s"), filepath.Join(shimDir, "fifo")} {
		_, err := os.Stat(d)
		h[d] = err == nil
	}
	return h
}

// cleanHostPaths removes what this node left in the host paths: the
// kubelet's device-plugin socket, container log links into logDir,
// libcni's cache entries of network, and the directories it created that
// are empty now.
func (h hostDirs) clean(logDir, network string) error {
	var errs []error
	if !h[devicePluginDir] {
		// Ours alone: the node holds the machine's kubenode lock.
		errs = append(errs, os.RemoveAll(devicePluginDir))
	} else if err := os.Remove(filepath.Join(devicePluginDir, "kubelet.sock")); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if ents, err := os.ReadDir(containerLogDir); err == nil {
		for _, e := range ents {
			p := filepath.Join(containerLogDir, e.Name())
			if t, err := os.Readlink(p); err == nil && strings.HasPrefix(t, logDir+"/") {
				errs = append(errs, os.Remove(p))
			}
		}
	}
	for _, sub := range []string{"results", "cache"} {
		ents, _ := os.ReadDir(filepath.Join(cniCacheDir, sub))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), network+"-") {
				errs = append(errs, os.RemoveAll(filepath.Join(cniCacheDir, sub, e.Name())))
			}
		}
	}
	// The sandboxes that cleanup removed without the kubelet (their
	// namespaces are gone now) leave cache entries.
	errs = append(errs, sweepGoneSandboxes(), h.cleanEmpty())
	return errors.Join(errs...)
}

// cleanEmpty removes the directories that did not exist before, if they
// are empty now.
func (h hostDirs) cleanEmpty() error {
	var errs []error
	// Deepest first, so a parent is empty when its turn comes.
	var ours []string
	for d, existed := range h {
		if !existed {
			ours = append(ours, d)
		}
	}
	sort.Slice(ours, func(i, j int) bool { return len(ours[i]) > len(ours[j]) })
	for _, d := range ours {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unmountUnder unmounts every mount at or below dir, deepest first (the
// kubelet bind-mounts its root dir onto itself and mounts pods' volumes
// under it).
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	var errs []error
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeNetns removes a sandbox's network namespace that containerd
// bind-mounted under /run/netns and never got to remove.
func removeNetns(path string) error {
	clean := filepath.Clean(path)
	if filepath.Dir(clean) != netnsDir && filepath.Dir(clean) != "/var/run/netns" {
		return fmt.Errorf("sandbox network namespace %s is not under %s: left alone", path, netnsDir)
	}
	// (netnsfile: also after an `ip netns add` bound /run/netns over
	// itself while the node ran, which leaves each file mounted twice.)
	return netnsfile.Delete(clean)
}

// cgroupHierarchies are the cgroup mounts (v1 hierarchies and the v2
// one) under /sys/fs/cgroup.
func cgroupHierarchies() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var hs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		sep := strings.Index(line, " - ")
		if len(fields) < 5 || sep < 0 {
			continue
		}
		fsType := strings.Fields(line[sep+3:])[0]
		if (fsType == "cgroup" || fsType == "cgroup2") && strings.HasPrefix(fields[4], "/sys/fs/cgroup") {
			hs = append(hs, fields[4])
		}
	}
	return hs, nil
}

// makeCgroupRoot creates the kubelet's --cgroup-root, name, in every
// hierarchy (the kubelet checks that it exists), with cpuset's cpus and
// mems copied from the parent, as a new cpuset cgroup starts empty.
func makeCgroupRoot(name string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		d := filepath.Join(h, name)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if _, err := os.Stat(filepath.Join(d, f)); err != nil {
				continue
			}
			if b, err := os.ReadFile(filepath.Join(h, f)); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s: %s: %w", d, f, err)
				}
			}
		}
	}
	return nil
}

// removeCgroupRoot removes name and every cgroup below it, deepest
// first, in every hierarchy. The processes in them must be gone.
func removeCgroupRoot(name string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		root := filepath.Join(h, name)
		var ds []string
		_ = filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				ds = append(ds, p)
			}
			return nil
		})
		sort.Slice(ds, func(i, j int) bool { return len(ds[i]) > len(ds[j]) })
		for _, d := range ds {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}
