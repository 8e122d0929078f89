package bpf

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshplane/meshplane/identity"
)

// headerPath is the datapath's ABI header.
const headerPath = "c/meshplane.h"

// headerStructs returns the structs of the datapath's header by name, each
// with its members' declarations ("__u8 pad[3]") in order.
func headerStructs(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(headerPath)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string][]string)
	var name string
	for _, line := range strings.Split(string(b), "\n") {
		if m := cStructStart.FindStringSubmatch(line); m != nil {
			name = m[1]
			out[name] = nil
			continue
		}
		if name == "" {
			continue
		}
		if strings.TrimSpace(line) == "};" {
			name = ""
			continue
		}
		if m := cMember.FindStringSubmatch(line); m != nil {
			out[name] = append(out[name], m[1]+" "+m[2]+m[3])
		}
	}
	return out
}

// TestHeaderLayouts checks the header the datapath is compiled with against
// the Go types, as TestCLayouts checks the doc comments: the same members
// in the same order, and, compiled for the BPF target, every member's
// offset and size and the struct's size those of the Go type.
func TestHeaderLayouts(t *testing.T) {
	clang := findClang(t, "cannot compile the datapath's header")
	header := headerStructs(t)
	docs := docStructs(t)
	abs, err := filepath.Abs(headerPath)
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	fmt.Fprintf(&src, "#include %q\n\n", abs)
	for _, a := range abiTypes {
		doc, ok := docs[a.typ.Name()]
		if !ok {
			t.Errorf("%s: its doc comment has no C struct", a.typ.Name())
			continue
		}
		members, ok := header[doc.name]
		if !ok {
			t.Errorf("%s: struct %s is not in %s", a.typ.Name(), doc.name, headerPath)
			continue
		}
		var docMembers []string
		for _, line := range strings.Split(doc.text, "\n") {
			if m := cMember.FindStringSubmatch(line); m != nil {
				docMembers = append(docMembers, m[1]+" "+m[2]+m[3])
			}
		}
		if strings.Join(members, "; ") != strings.Join(docMembers, "; ") {
			t.Errorf("struct %s: the header has\n\t%s\nthe doc comment of %s\n\t%s",
				doc.name, strings.Join(members, "; "), a.typ.Name(), strings.Join(docMembers, "; "))
			continue
		}
		fmt.Fprintf(&src, "_Static_assert(sizeof(struct %s) == %d, \"size of %s\");\n", doc.name, a.typ.Size(), a.typ.Name())
		for i, m := range doc.members {
			f := a.typ.Field(i)
			fmt.Fprintf(&src, "_Static_assert(__builtin_offsetof(struct %s, %s) == %d, \"offset of %s.%s (Go %s)\");\n",
				doc.name, m, f.Offset, doc.name, m, f.Name)
			fmt.Fprintf(&src, "_Static_assert(sizeof(((struct %s *)0)->%s) == %d, \"size of %s.%s (Go %s)\");\n",
				doc.name, m, f.Type.Size(), doc.name, m, f.Name)
		}
	}
	file := filepath.Join(t.TempDir(), "header.c")
	if err := os.WriteFile(file, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(clang, "-target", "bpfel", "-fsyntax-only", "-Wall", "-Werror", file).CombinedOutput()
	if err != nil {
		t.Fatalf("%s does not match the Go types:\n%s\n%s", headerPath, out, src.String())
	}
}

// TestHeaderConstants checks every number the header defines against the
// Go constant it mirrors. A new #define needs a line here.
func TestHeaderConstants(t *testing.T) {
	want := map[string]int{
		"MP_FAMILY_IPV4":                 int(FamilyIPv4),
		"MP_FAMILY_IPV6":                 int(FamilyIPv6),
		"MP_DIR_INGRESS":                 int(Ingress),
		"MP_DIR_EGRESS":                  int(Egress),
		"MP_VERDICT_ALLOW":               int(Allow),
		"MP_VERDICT_DENY":                int(Deny),
		"MP_IPCACHE_LOCAL":               int(IPCacheLocal),
		"MP_EP_POLICY_INGRESS":           int(EndpointPolicyIngress),
		"MP_EP_POLICY_EGRESS":            int(EndpointPolicyEgress),
		"MP_BACKEND_TERMINATING":         int(BackendTerminating),
		"MP_IDENTITY_WORLD":              int(identity.World),
		"MP_IDENTITY_REMOTE_NODE":        int(identity.RemoteNode),
		"MP_POLICY_FULL_PREFIXLEN":       policyFullBits,
		"MP_CT_OUT":                      int(CTOut),
		"MP_CT_IN":                       int(CTIn),
		"MP_CT_SERVICE":                  int(CTService),
		"MP_CT_SEEN_REPLY":               int(CTSeenReply),
		"MP_CT_FIN_ORIG":                 int(CTFinOrig),
		"MP_CT_FIN_REPLY":                int(CTFinReply),
		"MP_CT_RST":                      int(CTRST),
		"MP_CT_LIFETIME_TCP_ESTABLISHED": int(CTLifetimeTCPEstablished / time.Second),
		"MP_CT_LIFETIME_TCP_OPENING":     int(CTLifetimeTCPOpening / time.Second),
		"MP_CT_LIFETIME_TCP_CLOSED":      int(CTLifetimeTCPClosed / time.Second),
		"MP_CT_LIFETIME_OTHER":           int(CTLifetimeOther / time.Second),
		"MP_FLOW_FORWARDED":              int(Forwarded),
		"MP_FLOW_DROPPED":                int(Dropped),
		"MP_DROP_POLICY":                 int(DropPolicyDenied),
		"MP_DROP_SPOOFED":                int(DropSpoofedSource),
		"MP_DROP_UNKNOWN_ENDPOINT":       int(DropUnknownEndpoint),
		"MP_DROP_NO_BACKENDS":            int(DropNoBackends),
		"MP_DROP_CT_FULL":                int(DropCTFull),
		"MP_DROP_MALFORMED":              int(DropMalformed),
		"MP_DROP_UNSUPPORTED_L3":         int(DropUnsupportedL3),
		"MP_DROP_UNSUPPORTED_NAT":        int(DropUnsupportedNAT),
		"MP_DROP_NAT_FAILED":             int(DropNATFailed),
		"MP_DROP_NO_TUNNEL_ENDPOINT":     int(DropNoTunnelEndpoint),
		"MP_DROP_TUNNEL_FAILED":          int(DropTunnelFailed),
		"MP_DROP_TUNNEL_SOURCE":          int(DropTunnelSource),
		"MP_REASON_SLOTS":                maxDropReason,
		"MP_COUNTER_LOST_FLOWS":          counterLostFlow,
	}
	b, err := os.ReadFile(headerPath)
	if err != nil {
		t.Fatal(err)
	}
	define := regexp.MustCompile(`(?m)^#define (MP_\w+)\s+(\d+|\(1 << \d+\))`)
	seen := make(map[string]bool)
	for _, m := range define.FindAllStringSubmatch(string(b), -1) {
		name, val := m[1], m[2]
		var n int
		if rest, ok := strings.CutPrefix(val, "(1 << "); ok {
			shift, _ := strconv.Atoi(strings.TrimSuffix(rest, ")"))
			n = 1 << shift
		} else {
			n, _ = strconv.Atoi(val)
		}
		w, ok := want[name]
		switch {
		case !ok:
			t.Errorf("%s %s: no Go constant is checked against it; add it to this test", name, val)
		case n != w:
			t.Errorf("%s is %d in C, %d in Go", name, n, w)
		}
		seen[name] = true
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("%s is not defined in %s", name, headerPath)
		}
	}
	if countersMax != 3*maxDropReason || int(DropNATFailed) >= maxDropReason {
		t.Errorf("counter slots: %d per direction, %d in all, highest reason %d", maxDropReason, countersMax, DropNATFailed)
	}
}
