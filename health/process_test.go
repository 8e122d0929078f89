package health

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Tests with a member in a process of its own, which they signal as an
// operator or the kernel would: SIGSTOP (a process that runs nothing, as
// one starved of CPU or in a long stall) and SIGKILL (a crash).

// childEnv, set to "name,base64 key,seed", makes the test binary a member
// (TestMain calls runChild): it joins the seed, prints its address, and
// runs until killed or until its stdin closes.
const childEnv = "MESHPLANE_HEALTH_TEST_MEMBER"

func runChild() int {
	parts := strings.Split(os.Getenv(childEnv), ",")
	if len(parts) != 3 {
		fmt.Fprintln(os.Stderr, "child: want name,key,seed")
		return 2
	}
	key, err := base64.StdEncoding.DecodeString(parts[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	g, err := New(Config{Name: parts[0], BindAddr: "127.0.0.1", Keys: [][]byte{key}, Meta: Meta{Cluster: "test"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer g.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err = g.Join(ctx, []string{parts[2]})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	fmt.Println(g.LocalAddr())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent goes
	return 0
}

// child is a member process.
type child struct {
	name string
	cmd  *exec.Cmd
	addr string
}

// startChild starts a member process that joins seed; it is killed at the
// end of the test.
func startChild(t *testing.T, name string, key []byte, seed *node) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+name+","+base64.StdEncoding.EncodeToString(key)+","+seed.LocalAddr().String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("member process %s: %v", name, err)
	}
	return &child{name: name, cmd: cmd, addr: strings.TrimSpace(line)}
}

func (c *child) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", c.name, err)
	}
}

// TestPausedMemberStays pauses a member process (SIGSTOP) for 2.5 s in a
// cluster of two. memberlist declares it dead within that time (no other
// member can probe it indirectly or confirm, so the suspicion lasts its
// minimum, 1.2 s), but its node is up: the other member must not report
// it Dead, and must report it Alive once it runs again. Then it crashes
// (SIGKILL), and the other member must report it Dead.
func TestPausedMemberStays(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	a := start(t, Config{Name: "pause-a", Keys: [][]byte{key}, Meta: Meta{Cluster: "test"}})
	b := startChild(t, "pause-b", key, a)
	waitState(t, a, b.name, Alive, b.addr)

	b.signal(t, syscall.SIGSTOP)
	time.Sleep(2500 * time.Millisecond) // the pause: the fault, not a wait for state
	during := a.rec.history(b.name)
	b.signal(t, syscall.SIGCONT)
	waitState(t, a, b.name, Alive, b.addr)
	h := a.rec.history(b.name)
	t.Logf("during the pause: %v; in all: %v", during, h)
	if slices.Contains(h, Dead) || slices.Contains(h, Left) {
		t.Fatalf("%s reported the paused %s %v", a.Name(), b.name, h)
	}

	b.signal(t, syscall.SIGKILL)
	waitState(t, a, b.name, Dead, "")
}
