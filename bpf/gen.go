package bpf

// The datapath's C (c/datapath.c) compiles into datapath_bpfel.o and its
// loader datapath_bpfel.go, both committed; `make generate` runs this. The
// compiler is pinned (Debian bookworm's clang-14, as CI installs it) and
// the object is little-endian BPF only (amd64, arm64). bpf2go strips DWARF
// and maps the source directory out of the debug info, so the output is
// byte-identical in any checkout directory.
//
// -mcpu=v3 (32-bit jumps, atomic fetch operations) needs Linux 5.1, far
// below tcx's 6.6.
//go:generate go tool bpf2go -cc clang-14 -target bpfel -output-stem datapath -no-global-types -cflags "-O2 -g -Wall -Werror -mcpu=v3" dp c/datapath.c
