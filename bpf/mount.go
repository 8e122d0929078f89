package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// MountFS makes sure dir is on a bpffs, as Cilium's agent does for
// /sys/fs/bpf: it creates dir if it is missing and, when dir is on no
// bpffs, mounts a new bpffs instance on it (mount -t bpf bpf dir). A dir
// on a bpffs already (the mount itself or a directory inside it) is left
// as it is. It reports whether it mounted one.
//
// What it cannot do it says plainly, in an error wrapping ErrNotSupported
// with the command to run instead: mount without the privilege (root or
// CAP_SYS_ADMIN), on a kernel without bpffs, or create dir.
func MountFS(dir string) (mounted bool, err error) {
	howTo := fmt.Sprintf("mount it by hand: mount -t bpf bpf %s", dir)
	if !filepath.IsAbs(dir) {
		return false, fmt.Errorf("%w: bpffs directory %q is not an absolute path; name the mount, e.g. %s, or %s", ErrNotSupported, dir, DefaultDir, howTo)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("%w: cannot create the bpffs directory %s: %w; %s", ErrNotSupported, dir, err, howTo)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("%w: statfs %s: %w; %s", ErrNotSupported, dir, err, howTo)
	}
	if uint32(st.Type) == unix.BPF_FS_MAGIC {
		return false, nil
	}
	switch err := unix.Mount("bpf", dir, "bpf", 0, ""); {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EPERM):
		return false, fmt.Errorf("%w: no bpffs at %s, and mounting one is not permitted (it takes root or CAP_SYS_ADMIN); %s", ErrNotSupported, dir, howTo)
	case errors.Is(err, unix.ENODEV):
		return false, fmt.Errorf("%w: no bpffs at %s, and this kernel has none (it needs CONFIG_BPF_SYSCALL): run on a kernel with eBPF", ErrNotSupported, dir)
	default:
		return false, fmt.Errorf("%w: no bpffs at %s, and mounting one failed: %w; %s", ErrNotSupported, dir, err, howTo)
	}
}
