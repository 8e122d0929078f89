package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// EchoConfig configures Echo, the `meshctl lab echo` helper that every pod
// with ports runs.
type EchoConfig struct {
	// Name is what the server answers with: the pod's Ref.
	Name string
	// TCP and UDP are the ports to serve on every address of the netns.
	TCP, UDP []uint16
	// ReadyFile, if set, is created once every port listens.
	ReadyFile string
}

const (
	// maxEchoConns bounds the TCP connections served at once; more are
	// closed at once (a benchmark that opens more sees resets).
	maxEchoConns = 4096
	// echoIdle closes a TCP connection that sent nothing for this long.
	echoIdle = 2 * time.Minute
)

// Echo serves until ctx ends. On TCP it writes one line, "<Name>\n", to
// every new connection and then echoes every byte back; on UDP it answers
// every datagram with "<Name>\n" followed by the datagram. So a client
// learns which pod answered (the spread of a service) and that its bytes
// went both ways.
//
// One goroutine per listener and per UDP socket, one per connection; all
// end before Echo returns.
func Echo(ctx context.Context, cfg EchoConfig) error {
	if cfg.Name == "" || len(cfg.TCP)+len(cfg.UDP) == 0 {
		return errors.New("lab echo: needs a name and at least one port")
	}
	var (
		lns   []net.Listener
		pcs   []net.PacketConn
		mu    sync.Mutex // guards conns
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	closeAll := func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
		for _, pc := range pcs {
			_ = pc.Close()
		}
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	}
	for _, p := range cfg.TCP {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(int(p)))
		if err != nil {
			closeAll()
			return fmt.Errorf("lab echo: %w", err)
		}
		lns = append(lns, ln)
	}
	for _, p := range cfg.UDP {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(int(p)))
		if err != nil {
			closeAll()
			return fmt.Errorf("lab echo: %w", err)
		}
		pcs = append(pcs, pc)
	}
	stop := context.AfterFunc(ctx, closeAll)
	defer stop()
	hello := []byte(cfg.Name + "\n")
	for _, ln := range lns {
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				full := len(conns) >= maxEchoConns || ctx.Err() != nil
				if !full {
					conns[c] = struct{}{}
				}
				mu.Unlock()
				if full {
					_ = c.Close()
					continue
				}
				wg.Go(func() {
					defer func() {
						mu.Lock()
						delete(conns, c)
						mu.Unlock()
						_ = c.Close()
					}()
					echoConn(c, hello)
				})
			}
		})
	}
	for _, pc := range pcs {
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			out := make([]byte, 0, len(hello)+len(buf))
			for {
				n, addr, err := pc.ReadFrom(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						continue
					}
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue // ICMP errors of earlier replies, and the like
				}
				out = append(append(out[:0], hello...), buf[:n]...)
				_, _ = pc.WriteTo(out, addr)
			}
		})
	}
	if cfg.ReadyFile != "" {
		if err := os.WriteFile(cfg.ReadyFile, hello, 0o644); err != nil {
			closeAll()
			wg.Wait()
			return fmt.Errorf("lab echo: ready file: %w", err)
		}
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("lab echo: listeners closed")
}

func echoConn(c net.Conn, hello []byte) {
	if _, err := c.Write(hello); err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		_ = c.SetReadDeadline(time.Now().Add(echoIdle))
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
