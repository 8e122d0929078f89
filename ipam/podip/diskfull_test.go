package podip_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
)

// TestDiskFull runs a child (the limit is per process) that caps its file
// size with RLIMIT_FSIZE, so that a journal write fails part way, as on a
// full disk: the failed call allocates nothing, the partial record is cut
// off, and once there is room again the allocator carries on.
func TestDiskFull(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+t.TempDir(), crashModeEnv+"=diskfull")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasSuffix(string(out), "OK\n") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child: %s", out)
}

func diskFullChild(dir string) {
	if err := diskFull(dir); err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("OK")
	os.Exit(0)
}

func diskFull(dir string) error {
	cfg := podip.Config{Dir: dir}
	a, err := podip.Open(cfg, prefixes("10.1.0.0/16"))
	if err != nil {
		return err
	}
	for i := range 10 {
		if _, err := a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4); err != nil {
			return err
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		return err
	}
	// Room for a record and a half: the second write is cut short.
	size := a.Stats().Journal.Bytes
	capped := lim
	capped.Cur = uint64(size + 60)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &capped); err != nil {
		return err
	}
	var failed error
	for i := 10; i < 20 && failed == nil; i++ {
		owner := fmt.Sprint("pod-", i)
		if _, failed = a.Allocate(owner, ipam.IPv4); failed != nil && a.Lookup(owner) != nil {
			return fmt.Errorf("a failed Allocate left %s holding %v", owner, a.Lookup(owner))
		}
	}
	if !errors.Is(failed, syscall.EFBIG) {
		return fmt.Errorf("Allocate past the file size limit: %w, want EFBIG", failed)
	}
	fi, err := os.Stat(filepath.Join(dir, "podip.journal"))
	if err != nil {
		return err
	}
	if st := a.Stats(); fi.Size() != st.Journal.Bytes || st.Allocated != 11 || st.Journal.Err != nil {
		return fmt.Errorf("after the failed write: file of %d bytes, stats %+v", fi.Size(), st.Journal)
	}
	if err := a.Release("pod-0"); !errors.Is(err, syscall.EFBIG) || a.Lookup("pod-0") == nil {
		return fmt.Errorf("Release on a full disk: %w, holds %v", err, a.Lookup("pod-0"))
	}
	// Room again.
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		return err
	}
	for i := 20; i < 30; i++ {
		if _, err := a.Allocate(fmt.Sprint("pod-", i), ipam.IPv4); err != nil {
			return err
		}
	}
	if err := a.Release("pod-0"); err != nil {
		return err
	}
	before := fmt.Sprint(a.Allocations())
	if err := a.Close(); err != nil {
		return err
	}
	b, err := podip.Open(cfg, prefixes("10.1.0.0/16"))
	if err != nil {
		return err
	}
	defer b.Close()
	if after := fmt.Sprint(b.Allocations()); after != before || b.Stats().Journal.DroppedBytes != 0 {
		return fmt.Errorf("after reopen:\n%s\nbefore:\n%s", after, before)
	}
	return checkConsistent(b)
}
