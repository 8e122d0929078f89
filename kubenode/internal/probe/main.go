// Command probe is the test workload of kubenode's images: one static,
// stdlib-only binary with several modes.
//
//	probe serve [HTTP-ADDR [TCP-ADDR]]  HTTP on :8080 ("hello from <hostname>
//	                                    addrs=<addrs> remote=<peer> path=<path>")
//	                                    and a TCP echo on :9000
//	probe get URL                       GET URL and print the body (5 s timeout)
//	probe echo ADDR MESSAGE             send MESSAGE to a TCP echo at ADDR, print the answer
//	probe dial ADDR                     open a TCP connection to ADDR, print "connected"
//	probe pause                         wait for SIGTERM or SIGINT, reaping children
//
// Run as "pause" (argv[0], the sandbox image's entrypoint /pause) it is
// probe pause.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	if filepath.Base(os.Args[0]) == "pause" {
		args = []string{"pause"}
	}
	if err := run(args); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: probe serve|get|echo|dial|pause [args]")
	}
	switch args[0] {
	case "serve":
		httpAddr, tcpAddr := ":8080", ":9000"
		if len(args) > 1 {
			httpAddr = args[1]
		}
		if len(args) > 2 {
			tcpAddr = args[2]
		}
		return serve(httpAddr, tcpAddr)
	case "get":
		if len(args) != 2 {
			return errors.New("usage: probe get URL")
		}
		return get(args[1])
	case "echo":
		if len(args) != 3 {
			return errors.New("usage: probe echo ADDR MESSAGE")
		}
		return echo(args[1], args[2])
	case "dial":
		if len(args) != 2 {
			return errors.New("usage: probe dial ADDR")
		}
		c, err := net.DialTimeout("tcp", args[1], 5*time.Second)
		if err != nil {
			return err
		}
		_ = c.Close()
		fmt.Println("connected")
		return nil
	case "pause":
		pause()
		return nil
	}
	return fmt.Errorf("unknown mode %q: want serve, get, echo, dial or pause", args[0])
}

func serve(httpAddr, tcpAddr string) error {
	l, err := net.Listen("tcp", tcpAddr)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s addrs=%s remote=%s path=%s\n", host, addrs(), r.RemoteAddr, r.URL.Path)
	})
	srv := &http.Server{Addr: httpAddr, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
		_ = l.Close()
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func addrs() string {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return "?"
	}
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, ",")
}

func get(url string) error {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func echo(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

// pause is a sandbox's process: it reaps the children that the pod's
// shared PID namespace leaves it and exits on SIGTERM or SIGINT.
func pause() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
