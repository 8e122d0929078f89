package bpf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TempFS returns a directory with no bpffs, which the test unmounts
// (whatever is mounted there) when it ends.
func tempFSDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	t.Cleanup(func() {
		for unix.Unmount(dir, unix.MNT_DETACH) == nil {
		}
	})
	return dir
}

// TestMountFS: a directory without a bpffs gets one, as Cilium's agent
// mounts /sys/fs/bpf; one with a bpffs (or inside one) is left alone.
func TestMountFS(t *testing.T) {
	requireSupport(t)
	dir := tempFSDir(t)
	mounted, err := MountFS(dir)
	if err != nil || !mounted {
		t.Fatalf("MountFS(%s) = %v, %v; want a new mount", dir, mounted, err)
	}
	if err := CheckSupport(dir); err != nil {
		t.Fatalf("after MountFS: %v", err)
	}
	if mounted, err := MountFS(dir); err != nil || mounted {
		t.Fatalf("MountFS(%s) again = %v, %v; want it left alone", dir, mounted, err)
	}
	inside := filepath.Join(dir, "meshplane")
	if mounted, err := MountFS(inside); err != nil || mounted {
		t.Fatalf("MountFS(%s) inside a bpffs = %v, %v; want a directory, no mount", inside, mounted, err)
	}
	if fi, err := os.Stat(inside); err != nil || !fi.IsDir() {
		t.Fatalf("MountFS did not create %s: %v", inside, err)
	}
	ms, err := OpenMaps(Config{Dir: dir, Node: "mount-test", IPCacheMax: 16, EndpointsMax: 16, PolicyMax: 16, ServicesMax: 16, BackendsMax: 16})
	if err != nil {
		t.Fatalf("OpenMaps on the new bpffs: %v", err)
	}
	if err := ms.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestMountFSRefusals: what MountFS cannot do it says plainly.
func TestMountFSRefusals(t *testing.T) {
	requireSupport(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(file, "bpffs"), "relative/bpffs"} {
		mounted, err := MountFS(dir)
		if mounted || !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "mount -t bpf bpf") {
			t.Errorf("MountFS(%s) = %v, %v; want ErrNotSupported with the mount command", dir, mounted, err)
		}
	}
}
