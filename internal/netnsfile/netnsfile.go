// Package netnsfile removes named network namespaces (the bind mounts of
// namespace files under /run/netns that iproute2, containerd and the lab
// make) whatever was mounted over /run/netns after them.
//
// `ip netns add` binds /run/netns over itself (recursively) the first time
// it runs; every namespace file mounted before is then a mount point twice,
// and once the top copy is unmounted the file still cannot be removed
// (EBUSY). Delete unmounts every copy it can reach, and moves the covering
// mounts of /run/netns aside to reach the hidden ones. The lab, kubenode's
// sandbox cleanup and the test helpers share it.
package netnsfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces live.
const Dir = "/run/netns"

// maxStacked bounds the mounts of /run/netns over one another that
// Delete looks through, and the mounts it removes from one file.
const maxStacked = 16

// Delete removes a namespace file of Dir (or /var/run/netns), as `ip netns
// del` does. The namespace itself goes away with its last process; its
// interfaces with it. A file that is not there is not an error.
//
// A bind of /run/netns over itself copies the mounts below it; they are
// unmounted as long as the file is one. When the file still cannot be
// removed (EBUSY), a mount of /run/netns on top hides one of its mounts
// (made before /run/netns was bound over itself, or by a tool that binds
// without MS_REC). unmountHidden then reaches it.
func Delete(path string) error {
	path = filepath.Clean(path)
	if filepath.Dir(path) == "/var/run/netns" {
		path = filepath.Join(Dir, filepath.Base(path))
	}
	if err := unmountAll(path); err != nil {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	err := os.Remove(path)
	if errors.Is(err, unix.EBUSY) {
		if herr := unmountHidden(path); herr != nil {
			return herr
		}
		err = os.Remove(path)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// unmountAll unmounts every mount stacked on path; a path that is no
// mount point (or not there) is done.
func unmountAll(path string) error {
	for range maxStacked {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("%s: more than %d mounts on it", path, maxStacked)
}

// unmountHidden unmounts the mounts on path (a file in /run/netns) that
// mounts of /run/netns on top of it hide. Only the mount points of those
// mounts are reachable by path, so it moves them aside (MS_MOVE, top
// first) to a directory beside /run/netns, unmounts path at each level it
// uncovers, and moves them back in order. While they are aside (a few
// system calls), namespaces that exist only in them are not seen in
// /run/netns. A move is refused under a shared parent mount; there the
// mounts propagate and nothing is hidden.
func unmountHidden(path string) (err error) {
	aside, err := os.MkdirTemp(filepath.Dir(Dir), ".meshplane-netns-")
	if err != nil {
		return fmt.Errorf("%s is mounted below another mount of %s: %w", path, Dir, err)
	}
	defer func() { _ = os.RemoveAll(aside) }()
	var moved []string
	defer func() {
		for i := len(moved) - 1; i >= 0; i-- {
			if merr := unix.Mount(moved[i], Dir, "", unix.MS_MOVE, ""); merr != nil {
				err = errors.Join(err, fmt.Errorf("move the mount of %s back from %s: %w: do it by hand: mount --move %s %s",
					Dir, moved[i], merr, moved[i], Dir))
				aside = "" // keep the directory: it holds a mount
			}
		}
	}()
	for range maxStacked {
		top, err := isMountRoot(Dir)
		if err != nil || !top {
			return err
		}
		dst := filepath.Join(aside, strconv.Itoa(len(moved)))
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
		if err := unix.Mount(Dir, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("%s is mounted below another mount of %s, which cannot be moved aside (%w): "+
				"unmount it by hand (umount %s shows the one below; check first that no other tool needs it)", path, Dir, err, Dir)
		}
		moved = append(moved, dst)
		if err := unmountAll(path); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s: more than %d mounts of %s on one another", path, maxStacked, Dir)
}

// isMountRoot reports whether path is the root of a mount.
func isMountRoot(path string) (bool, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &st); err != nil {
		return false, fmt.Errorf("statx %s: %w", path, err)
	}
	if st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, fmt.Errorf("statx %s: the kernel does not say whether it is a mount point (Linux 5.8 or later does)", path)
	}
	return st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}
