package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// privateMountNSEnv, set to the parent's mount namespace, marks the child
// that TestDownAfterNetnsOvermount runs in a mount namespace of its own.
const privateMountNSEnv = "MESHPLANE_LAB_TEST_PARENT_MOUNTNS"

// inPrivateMountNS runs the calling test again in a child process with a
// mount namespace of its own, whose mounts are private (Go's exec makes /
// MS_REC|MS_PRIVATE after unshare), so that what the test mounts on
// /run/netns never reaches the host, where other labs may run. It returns
// true in the child, which then does the work; in the parent it waits for
// the child and reports its outcome.
func inPrivateMountNS(t *testing.T) bool {
	t.Helper()
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	if parent := os.Getenv(privateMountNSEnv); parent != "" {
		if parent == self {
			t.Fatal("the child shares its parent's mount namespace: refusing to touch /run/netns")
		}
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), privateMountNSEnv+"="+self)
	cmd.SysProcAttr = &unix.SysProcAttr{Unshareflags: unix.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a private mount namespace: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("the child did not pass:\n%s", out)
	}
	t.Logf("in a private mount namespace:\n%s", out)
	return false
}

// freshRun gives this (private) mount namespace an empty /run, where
// /run/netns is a plain directory, as on a host that has never run ip
// netns add.
func freshRun(t *testing.T) {
	t.Helper()
	_ = unix.Unmount("/run", unix.MNT_DETACH)
	if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "size=4m,mode=755"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(netnsDir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// oldNetns makes a named namespace as labs did before they made
// /run/netns a shared mount: a private bind mount on a plain directory.
func oldNetns(t *testing.T, name string) {
	t.Helper()
	path := netnsPath(name)
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // retired with the goroutine: it stays in the new namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "none", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func ipNetns(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"netns"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip netns %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestDownAfterNetnsOvermount: Down removes a lab's namespaces after
// another tool bind-mounted /run/netns over itself, as ip netns add does
// on a host where /run/netns is no mount point yet and a container
// runtime may do at any time. The copy on top once left the lab's
// original mounts hidden below: Down failed with "device or resource
// busy", and Up kept saying to run Down. Whatever Down cannot remove must
// never be left for Up to trip on.
func TestDownAfterNetnsOvermount(t *testing.T) {
	requireLab(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip (iproute2)")
	}
	if !inPrivateMountNS(t) {
		return
	}
	ctx := context.Background()
	down := func(t *testing.T, lab string) {
		t.Helper()
		entries, _ := os.ReadDir(netnsDir)
		o := Options{RunDir: t.TempDir(), BPFFS: t.TempDir()}
		if err := Down(ctx, lab, o); err != nil {
			t.Fatalf("Down: %v", err)
		}
		// Other tools' namespaces are still there and usable.
		for _, e := range entries {
			if isLabNetns(lab, e.Name()) {
				continue
			}
			var st unix.Statfs_t
			if err := unix.Statfs(netnsPath(e.Name()), &st); err != nil || st.Type != unix.NSFS_MAGIC {
				t.Errorf("netns %s of another tool is gone after Down (%v)", e.Name(), err)
			}
			ipNetns(t, "exec", e.Name(), "true")
		}
		if err := checkFree(lab, filepath.Join(o.RunDir, lab)); err != nil {
			t.Fatalf("after Down, Up would refuse: %v", err)
		}
		if _, err := os.Stat(netnsPath(labNetnsName(lab))); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the lab's netns file is still there (%v)", err)
		}
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, lab string)
	}{
		{"ip netns add after the lab", func(t *testing.T, lab string) {
			if _, err := createNetns(labNetnsName(lab)); err != nil {
				t.Fatal(err)
			}
			ipNetns(t, "add", "other-"+lab)
			t.Cleanup(func() { ipNetns(t, "del", "other-"+lab) })
		}},
		{"a lab of an older version, then ip netns add", func(t *testing.T, lab string) {
			oldNetns(t, labNetnsName(lab))
			ipNetns(t, "add", "other-"+lab)
			t.Cleanup(func() { ipNetns(t, "del", "other-"+lab) })
		}},
		{"a recursive bind of /run/netns after the lab", func(t *testing.T, lab string) {
			if _, err := createNetns(labNetnsName(lab)); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				t.Fatal(err)
			}
		}},
		{"a plain bind of /run/netns after an older lab", func(t *testing.T, lab string) {
			oldNetns(t, labNetnsName(lab))
			if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			freshRun(t)
			lab := fmt.Sprintf("ovm%d", i)
			tt.setup(t, lab)
			down(t, lab)
		})
	}
}
