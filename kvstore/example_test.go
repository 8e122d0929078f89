package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/kvstore/embedded"
)

// ExampleCache starts an embedded etcd (package kvstore/embedded, in a
// temporary directory), claims a key with a compare-and-create transaction, and
// mirrors the prefix in a typed watch cache.
func ExampleCache() {
	dir, err := os.MkdirTemp("", "kvstore-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := embedded.Connect(ctx, dir, kvstore.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	const prefix = "/meshplane/v1/example/ports/"
	if _, err := c.Create(ctx, prefix+"http", []byte("80")); err != nil {
		fmt.Println(err)
		return
	}
	// A second claim loses and learns the winner's value.
	if kv, err := c.Create(ctx, prefix+"http", []byte("8080")); errors.Is(err, kvstore.ErrConflict) {
		fmt.Printf("http is taken: %s\n", kv.Value)
	}

	cache, err := kvstore.NewCache(c, kvstore.CacheConfig[int]{
		Prefix: prefix,
		Decode: func(_ string, v []byte) (int, error) { return strconv.Atoi(string(v)) },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cache.Run(runCtx) }()
	if err := cache.WaitSynced(ctx); err == nil {
		port, _ := cache.Get("http")
		fmt.Println("http port:", port)
	}
	stop() // Run returns after its goroutines exit
	fmt.Println("run:", <-done)
	// Output:
	// http is taken: 80
	// http port: 80
	// run: context canceled
}
