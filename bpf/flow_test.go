package bpf

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestDatapathEnumStrings(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{NotDropped.String(), "none"},
		{DropPolicyDenied.String(), "policy denied"},
		{DropSpoofedSource.String(), "source not of this endpoint"},
		{DropUnknownEndpoint.String(), "unknown endpoint"},
		{DropNoBackends.String(), "service has no backends"},
		{DropCTFull.String(), "conntrack full"},
		{DropMalformed.String(), "malformed"},
		{DropUnsupportedL3.String(), "unsupported L3"},
		{DropUnsupportedNAT.String(), "unsupported translation"},
		{DropNATFailed.String(), "translation failed"},
		{DropReason(31).String(), "reason(31)"},
		{Forwarded.String(), "forwarded"},
		{Dropped.String(), "dropped"},
		{FlowVerdict(0).String(), "verdict(0)"},
		{CTOut.String(), "out"},
		{CTIn.String(), "in"},
		{CTService.String(), "service"},
		{CTDir(9).String(), "ctdir(9)"},
		{(CTSeenReply | CTRST).String(), "seen-reply|rst"},
		{CTFlags(0).String(), "-"},
	} {
		if tc.got != tc.want {
			t.Errorf("String() = %q; want %q", tc.got, tc.want)
		}
	}
}

func TestCTLifetime(t *testing.T) {
	for _, tc := range []struct {
		proto uint8
		flags CTFlags
		want  time.Duration
	}{
		{ProtoTCP, 0, time.Minute},
		{ProtoTCP, CTSeenReply, 6 * time.Hour},
		{ProtoTCP, CTSeenReply | CTFinOrig, time.Minute},
		{ProtoTCP, CTSeenReply | CTFinReply, time.Minute},
		{ProtoTCP, CTSeenReply | CTFinOrig | CTFinReply, 10 * time.Second},
		{ProtoTCP, CTSeenReply | CTRST, 10 * time.Second},
		{ProtoTCP, CTRST, 10 * time.Second},
		{ProtoUDP, CTSeenReply, time.Minute},
		{1, 0, time.Minute},
	} {
		if got := CTLifetime(tc.proto, tc.flags); got != tc.want {
			t.Errorf("CTLifetime(%s, %s) = %v; want %v", protoName(tc.proto), tc.flags, got, tc.want)
		}
	}
	const sec = uint64(time.Second)
	v := CTValue{LastSeen: 100 * sec, Flags: CTSeenReply}
	for _, tc := range []struct {
		proto uint8
		now   uint64
		want  bool
	}{
		{ProtoUDP, 160 * sec, false},
		{ProtoUDP, 160*sec + 1, true},
		{ProtoTCP, 160*sec + 1, false},
		{ProtoTCP, 100*sec + 6*3600*sec + 1, true},
		// Another CPU stored a last_seen after this reader's now.
		{ProtoUDP, 99 * sec, false},
	} {
		if got := v.Expired(tc.proto, tc.now); got != tc.want {
			t.Errorf("Expired(%s, %d) = %v; want %v", protoName(tc.proto), tc.now, got, tc.want)
		}
	}
}

func TestCTTypes(t *testing.T) {
	src, dst := netip.MustParseAddrPort("10.0.1.5:41234"), netip.MustParseAddrPort("10.0.2.7:8080")
	k := CTKeyFor(CTOut, ProtoTCP, src, dst)
	if k.Src() != src || k.Dst() != dst || k.Family != FamilyIPv4 || k.SAddr != [16]byte{10, 0, 1, 5} || k.SPort != [2]byte{0xa1, 0x12} {
		t.Errorf("CTKeyFor = %+v", k)
	}
	if got, want := k.String(), "out tcp 10.0.1.5:41234 -> 10.0.2.7:8080"; got != want {
		t.Errorf("String() = %q; want %q", got, want)
	}
	v := CTValue{Packets: 3, Bytes: 200, Flags: CTSeenReply, BackendID: 7, NATFamily: FamilyIPv4, NATAddr: [16]byte{10, 96, 0, 10}, NATPort: [2]byte{0, 80}}
	if v.NAT() != netip.MustParseAddrPort("10.96.0.10:80") {
		t.Errorf("NAT() = %v", v.NAT())
	}
	if got, want := v.String(), "flags=seen-reply packets=3 bytes=200 nat=10.96.0.10:80 backend=7"; got != want {
		t.Errorf("String() = %q; want %q", got, want)
	}
	if (CTValue{}).NAT().IsValid() {
		t.Error("NAT of an entry without translation is valid")
	}
}

// TestDecodeFlow encodes a record as the datapath lays it out and checks
// every field of the Flow.
func TestDecodeFlow(t *testing.T) {
	rec := flowRecord{
		KTime: 123456789, Verdict: Dropped, Reason: DropPolicyDenied, Direction: Ingress,
		Family: FamilyIPv4, Proto: ProtoTCP, TCPFlags: 0x02, IsReply: 1, SvcFamily: FamilyIPv4,
		SAddr: [16]byte{10, 0, 0, 1}, DAddr: [16]byte{10, 0, 0, 2}, SPort: [2]byte{0x30, 0x39}, DPort: [2]byte{0x1f, 0x90},
		SrcIdentity: 70001, DstIdentity: 70002, EndpointID: 12, IfIndex: 7,
		SvcAddr: [16]byte{10, 96, 0, 10}, SvcPort: [2]byte{0, 80},
	}
	b, err := binary.Append(nil, binary.NativeEndian, &rec)
	if err != nil || len(b) != flowRecordSize {
		t.Fatalf("encode: %d bytes, %v", len(b), err)
	}
	got, err := decodeFlow(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Flow{
		Time: 123456789, Verdict: Dropped, Reason: DropPolicyDenied, Direction: Ingress, Proto: ProtoTCP,
		Src: netip.MustParseAddrPort("10.0.0.1:12345"), Dst: netip.MustParseAddrPort("10.0.0.2:8080"),
		SrcIdentity: 70001, DstIdentity: 70002, EndpointID: 12, IfIndex: 7,
		Service: netip.MustParseAddrPort("10.96.0.10:80"), TCPFlags: 0x02, Reply: true,
	}
	if got != want {
		t.Errorf("decodeFlow =\n\t%+v\nwant\n\t%+v", got, want)
	}
	// A record whose addresses were not read has zero AddrPorts.
	rec.Family, rec.SvcFamily = 0, 0
	b, _ = binary.Append(nil, binary.NativeEndian, &rec)
	if got, _ := decodeFlow(b); got.Src.IsValid() || got.Dst.IsValid() || got.Service.IsValid() {
		t.Errorf("decodeFlow without families = %+v; want zero addresses", got)
	}
	if _, err := decodeFlow(b[:40]); err == nil || !strings.Contains(err.Error(), "40 bytes") {
		t.Errorf("decodeFlow of a short event = %v", err)
	}
}

func TestConfigValidateDatapath(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string // a piece of the error; "" for none
	}{
		{Config{Node: "n"}, ""},
		{Config{Node: "n", CTMax: 1024, FlowRingBytes: 1 << 16}, ""},
		{Config{Node: "n", FlowRingBytes: 1 << 30}, ""},
		{Config{Node: "n", CTMax: -1}, "CTMax -1"},
		{Config{Node: "n", CTMax: maxMapEntries + 1}, "CTMax"},
		{Config{Node: "n", FlowRingBytes: 3 << 12}, "power of two"},
		{Config{Node: "n", FlowRingBytes: 1024}, "FlowRingBytes 1024"},
		{Config{Node: "n", FlowRingBytes: -4096}, "FlowRingBytes"},
		{Config{Node: "n", FlowRingBytes: 1 << 31}, "FlowRingBytes"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("Validate(%+v) = %v; want nil", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("Validate(%+v) = %v; want an error saying %q", tc.cfg, err, tc.want)
		}
	}
	d := Config{Node: "n"}.withDefaults()
	if d.CTMax != DefaultCTMax || d.FlowRingBytes != DefaultFlowRingBytes || DefaultCTMax != 262144 || DefaultFlowRingBytes != 1<<20 {
		t.Errorf("defaults: CTMax %d, FlowRingBytes %d", d.CTMax, d.FlowRingBytes)
	}
}
