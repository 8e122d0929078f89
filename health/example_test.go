package health_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log"
	"time"

	"github.com/meshplane/meshplane/health"
)

// Two members on this host: the second joins through the first, and both
// see each other alive. An agent passes the node's IP, DefaultBindPort,
// the cluster's key and the gossip addresses from the node records in etcd.
func Example() {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		log.Fatal(err)
	}
	start := func(name string) *health.Gossip {
		g, err := health.New(health.Config{
			Name:     name,
			BindAddr: "127.0.0.1",
			Keys:     [][]byte{key},
			Meta:     health.Meta{Cluster: "example", Version: "v1"},
			Notify: func(m health.Member) {
				// Called from one goroutine, with each member's latest state:
				// an agent removes a Dead node's routes here.
			},
		})
		if err != nil {
			log.Fatal(err)
		}
		return g
	}
	a := start("node-a")
	defer a.Close()
	b := start("node-b")
	defer b.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Join(ctx, []string{a.LocalAddr().String()}); err != nil {
		log.Fatal(err)
	}
	for a.Stats().Alive < 2 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond) // poll: gossip reaches a shortly
	}
	for _, m := range a.Members() {
		fmt.Println(m.Name, m.State, m.Meta.Version)
	}
	// Output:
	// node-a alive v1
	// node-b alive v1
}
