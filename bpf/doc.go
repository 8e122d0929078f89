// Package bpf is meshplane's whole interface to eBPF: the only package that
// imports github.com/cilium/ebpf. It holds the agent's pinned maps, typed
// (Map[K, V]), the binary layout of every key and value, which the
// datapath's C code shares, and the datapath itself: the C programs
// (c/datapath.c, compiled by bpf2go into datapath_bpfel.o), their loader
// and their attachments, tc or tcx (Datapath), conntrack, flow events and
// counters. docs/datapath.md describes what the programs do to packets.
//
// # Pins
//
// An agent's maps are pinned under the bpffs mount (Config.Dir, by default
// /sys/fs/bpf), one directory per node, so that several agents on one
// machine (the lab) keep apart:
//
//	<Dir>/meshplane/<Node>/mp_ipcache    LPM trie  IPCacheKey  -> IPCacheValue   prefix -> identity, node
//	<Dir>/meshplane/<Node>/mp_endpoints  hash      EndpointKey -> EndpointValue  local pod IP -> endpoint
//	<Dir>/meshplane/<Node>/mp_policy     LPM trie  PolicyKey   -> PolicyValue    endpoint, identity, L4 -> verdict
//	<Dir>/meshplane/<Node>/mp_services   hash      ServiceKey  -> ServiceValue   frontend, slot -> backend
//	<Dir>/meshplane/<Node>/mp_backends   hash      BackendKey  -> BackendValue   backend ID -> address
//	<Dir>/meshplane/<Node>/mp_cidr       LPM trie  IPCacheKey  -> CIDRValue      ipBlock prefix -> CIDR identity
//	<Dir>/meshplane/<Node>/mp_ct         LRU hash  CTKey       -> CTValue        connection -> state (LoadDatapath)
//	<Dir>/meshplane/<Node>/mp_flows      ring buffer of flow events (LoadDatapath, FlowReader)
//	<Dir>/meshplane/<Node>/mp_counters   per-CPU array: direction, drop reason -> packets, bytes (LoadDatapath)
//	<Dir>/meshplane/<Node>/links/<ifindex>-from-pod, <ifindex>-to-pod   tcx links (Attach in AttachTCX mode)
//	<Dir>/meshplane/<Node>/links/tunnel-from-tunnel, tunnel-to-tunnel   tcx links on the VXLAN device (AttachTunnel)
//
// The pin's file name is also the map's kernel name (bpftool map show). The
// agent creates the maps, the datapath's programs use them through
// MapReplacements, and OpenMaps on an agent restart reopens the same kernel
// maps (Map.ID proves it) with their contents: the datapath keeps
// forwarding while the new agent reads the maps and writes only the
// difference.
//
// # Datapath
//
// LoadDatapath loads four programs bound to the maps above; Attach puts
// from_pod on the ingress and to_pod on the egress of a pod's host veth,
// as cls_bpf filters on a clsact qdisc (AttachTC, the default: no RCU
// grace period per attach, see AttachMode) or as pinned tcx links
// (AttachTCX), and moves a veth attached in the other mode to its own;
// AttachTunnel puts from_tunnel and to_tunnel on the node's flow-based
// VXLAN device in tunnel mode (to_tunnel sets the
// tunnel key from the ipcache's node address, from_tunnel gives the
// decapsulated frame the pod's MACs and redirects it to the pod's host
// veth, where to_pod runs), so the datapath keeps forwarding while no agent
// runs. A new agent's LoadDatapath reuses the pinned conntrack, flow and
// counter maps and its Attach swaps the new programs into the filters or
// pinned links atomically: established connections survive an upgrade.
// Close releases the agent's file descriptors only; Detach removes the
// programs from a veth (RemovePins removes tcx pins too; tc filters go
// with their veth). The C sources live in c/: base.h (the kernel ABI
// the programs need, written out so the object does not depend on the
// build machine's headers), meshplane.h (this package's types as C
// structs, checked against the Go types by TestHeaderLayouts and
// TestHeaderConstants), maps.h, parse.h, conntrack.h, nat.h (service
// translation and ICMP errors) and datapath.c (counters, flow events,
// policy and the four programs).
//
// # ABI
//
// Each key and value type is laid out as the C struct in its comment:
// fixed-size fields in host byte order, except ports, which are big-endian
// (__be16, Go [2]byte) because the datapath reads them from packets;
// addresses as a family byte plus 16 bytes, IPv4 in the first 4 (see
// Family); padding explicit and zero. The layouts are an ABI shared with
// the C code and with maps pinned by earlier agents. Changing one (a field,
// its size, the map's type or flags) needs a new map name, or a migration
// that fills a new map beside the old one before the datapath switches;
// tests pin every size and offset so that a change cannot slip in.
//
// # Incompatible pins
//
// If a pinned map's type, key size, value size, flags or max entries differ
// from what this version and its Config want, OpenMaps fails with
// ErrIncompatible and leaves the map alone. It never deletes or recreates a
// pinned map by itself: the datapath is using it, and an empty map would
// blackhole the node's traffic until the agent refilled it. The message
// names the pin and the difference; the operator drains the node and
// deletes the pin (rm <Dir>/meshplane/<Node>/<map>), or sets the size back.
//
// # Errors
//
//   - ErrNotSupported: bpffs is not mounted at Config.Dir, the process lacks
//     CAP_BPF (or root), or the kernel lacks a map type or operation.
//     CheckSupport says which. MountFS mounts a bpffs where there is none,
//     as Cilium's agent does (this package owns bpffs), and says what it
//     cannot do: mount without CAP_SYS_ADMIN, or on a kernel without bpffs.
//   - ErrIncompatible: a pinned map is not what this version wants (above),
//     or OpenPinned's key or value type does not fit the map.
//   - ErrMapFull: a write needed a new entry in a full map (the kernel's
//     E2BIG for hash maps, ENOSPC for LPM tries). The message names the
//     map, its size and the Config field to raise.
//   - ErrIterationAborted: a walk could not finish because the map changed
//     too fast (see Map.Iterate); retrying later is safe.
//   - os.ErrClosed: the Map was closed.
//
// A key that is absent is not an error: Lookup and Delete report it with a
// bool, DeleteBatch skips it.
//
// # Concurrency
//
// The package starts no goroutines and never logs. A Map may be used from
// many goroutines; Close waits for the calls in progress. Other processes
// (the datapath, bpftool, a second agent by mistake) may change a map at any
// time: single-key operations are atomic in the kernel, batches are not
// (a failed batch reports how far it got), and Iterate copes with
// concurrent deletes as its documentation says.
//
// The kernel must have the batch map operations and LPM tries (any kernel
// with tcx, which the datapath needs, has them). Memory for maps is charged
// to the agent's cgroup (Linux 5.11 and later), so no RLIMIT_MEMLOCK
// change is needed.
package bpf
