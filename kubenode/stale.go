package kubenode

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ownerFile, in a node's directory, holds the PID of the process that
// started the node; netnsFile the name of the node's network namespace.
const (
	ownerFile = "owner"
	netnsFile = "netns"
)

// alive reports whether a process with pid exists.
func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// sweepStale removes what nodes of processes that died without their
// cleanup (a test binary killed at its timeout) left: their containers'
// processes and cgroups, their shims, mounts and directories. The
// daemons died with them (parent-death signal); the shims and
// containers did not. It runs under the machine's kubenode lock, so no
// other node starts meanwhile. The node's own network namespace goes
// too; the sandboxes' (cni-<uuid>), which cannot be told from another
// runtime's, are left.
func sweepStale() error {
	var errs []error
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	stale := map[string]bool{}
	for _, h := range hs {
		ents, _ := os.ReadDir(h)
		for _, e := range ents {
			if pid, ok := ownerPID(strings.TrimPrefix(e.Name(), "kubenode-"), e.Name()); ok && !alive(pid) {
				stale[e.Name()] = true
			}
		}
	}
	for name := range stale {
		// Kill what runs in the cgroups first (the containers), so that
		// they can go.
		for _, h := range hs {
			_ = filepath.WalkDir(filepath.Join(h, name), func(p string, e os.DirEntry, err error) error {
				if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = unix.Kill(pid, unix.SIGKILL)
					}
				}
				return nil
			})
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "kn-*"))
	found := len(stale) > 0
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || alive(pid) {
			continue
		}
		found = true
		killShims(filepath.Join(d, "containerd", "containerd.sock"))
		// The dead kubelet's links to its pods' logs.
		if ents, err := os.ReadDir(containerLogDir); err == nil {
			for _, e := range ents {
				l := filepath.Join(containerLogDir, e.Name())
				if t, err := os.Readlink(l); err == nil && strings.HasPrefix(t, d+"/") {
					errs = append(errs, os.Remove(l))
				}
			}
		}
		if err := unmountUnder(d); err != nil {
			errs = append(errs, err)
		}
		if b, err := os.ReadFile(filepath.Join(d, netnsFile)); err == nil {
			if name := strings.TrimSpace(string(b)); name != "" && !strings.ContainsRune(name, '/') {
				if err := removeNetns(filepath.Join(netnsDir, name)); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	for name := range stale {
		if err := removeCgroupRoot(name); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, sweepCNICache())
	if found {
		// The host directories a dead node may have made: each goes only
		// if it is empty (hostDirs.clean with none existing before).
		// The dead kubelet's socket: no other kubelet runs under the lock.
		_ = os.Remove(filepath.Join(devicePluginDir, "kubelet.sock"))
		none := hostDirs{}
		for d := range snapshotHostDirs() {
			none[d] = false
		}
		errs = append(errs, none.cleanEmpty())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove what dead nodes left: %w", err)
	}
	return nil
}

// sweepCNICache removes libcni's cache entries of dead nodes' networks
// (kubenode-<pid>-<n>-...), and the sandbox network namespaces they name:
// a dead node's pods were never torn down.
func sweepCNICache() error {
	var errs []error
	dir := filepath.Join(cniCacheDir, "results")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		pid, ok := ownerPID(strings.TrimPrefix(e.Name(), "kubenode-"), e.Name())
		if !ok || alive(pid) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if b, err := os.ReadFile(p); err == nil {
			var c struct {
				NetNS  string `json:"netns"`
				Result struct {
					Interfaces []struct {
						Sandbox string `json:"sandbox"`
					} `json:"interfaces"`
				} `json:"result"`
			}
			if json.Unmarshal(b, &c) == nil {
				paths := map[string]bool{c.NetNS: true}
				for _, i := range c.Result.Interfaces {
					paths[i.Sandbox] = true
				}
				for ns := range paths {
					if ns == "" {
						continue
					}
					if err := removeNetns(ns); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
		errs = append(errs, os.Remove(p))
	}
	errs = append(errs, sweepGoneSandboxes())
	return errors.Join(errs...)
}

// sweepGoneSandboxes removes libcni's cache entries (results/<network>-<sandbox
// ID>-<ifname>: containerd's loopback network's, meshplane's, any
// network's) whose sandbox network namespace is gone: stale for any
// runtime, and what a node's sandboxes that were never torn down (a
// killed run) leave.
func sweepGoneSandboxes() error {
	var errs []error
	dir := filepath.Join(cniCacheDir, "results")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var c struct {
			Result struct {
				Interfaces []struct {
					Sandbox string `json:"sandbox"`
				} `json:"interfaces"`
			} `json:"result"`
		}
		if json.Unmarshal(b, &c) != nil {
			continue
		}
		// The pod's interface names the sandbox (a host side does not).
		i := slices.IndexFunc(c.Result.Interfaces, func(ifc struct {
			Sandbox string `json:"sandbox"`
		}) bool {
			return ifc.Sandbox != ""
		})
		if i < 0 {
			continue
		}
		if _, err := os.Stat(c.Result.Interfaces[i].Sandbox); errors.Is(err, os.ErrNotExist) {
			errs = append(errs, os.Remove(p))
		}
	}
	return errors.Join(errs...)
}

// ownerPID parses the PID out of a "<pid>-<n>" node ID; name must start
// with "kubenode-".
func ownerPID(id, name string) (int, bool) {
	if !strings.HasPrefix(name, "kubenode-") {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(id, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil
}
