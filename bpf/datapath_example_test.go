package bpf_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/meshplane/meshplane/bpf"
)

// The agent at start: the maps, then the datapath on them, attached to
// each local pod's host veth (from a thread in the node's network
// namespace), and a reader of its flow events. A restarted agent does the
// same: its Attach swaps the new programs into the links the previous
// agent pinned, and connections carry on.
func ExampleLoadDatapath() {
	cfg := bpf.Config{Node: "node-1"}
	maps, err := bpf.OpenMaps(cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer maps.Close()
	dp, err := bpf.LoadDatapath(cfg, maps)
	if err != nil {
		fmt.Println(err) // ErrNotSupported, ErrIncompatible, or the verifier's log
		return
	}
	// Closing leaves the programs attached: they keep forwarding.
	defer dp.Close()

	const hostVeth = 7 // the ifindex of a pod's host-side veth
	if err := dp.Attach(hostVeth); err != nil {
		fmt.Println(err)
		return
	}

	flows, err := dp.Flows()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer flows.Close() // from another goroutine, to stop the loop below
	for {
		f, err := flows.Read()
		if errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			fmt.Println(err)
			return
		}
		if f.Verdict == bpf.Dropped {
			fmt.Printf("%s %s -> %s dropped: %s\n", f.Direction, f.Src, f.Dst, f.Reason)
		}
	}
}
