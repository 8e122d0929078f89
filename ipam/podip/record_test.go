package podip

import (
	"bytes"
	"net/netip"
	"testing"
)

// FuzzParseRecord: parseRecord accepts exactly what appendRecord writes,
// so whatever it accepts is written back byte for byte.
func FuzzParseRecord(f *testing.F) {
	for _, r := range []record{
		{kindAlloc, 1767322245000000000, netip.MustParseAddr("10.1.2.3"), "ns/pod/c1"},
		{kindRelease, -1, netip.MustParseAddr("fd00::2"), "a b c"},
		{kindQuarantine, 0, netip.MustParseAddr("::"), "x"},
	} {
		line := appendRecord(nil, r)
		f.Add(line[:len(line)-1])
	}
	f.Add([]byte("00000000 A 1 10.1.2.3 x"))
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := parseRecord(line)
		if err != nil {
			return
		}
		if got := appendRecord(nil, r); !bytes.Equal(got, append(line, '\n')) {
			t.Fatalf("parsed %q as %+v, which is written as %q", line, r, got)
		}
	})
}

// FuzzRecordRoundTrip: every record with a valid owner and address reads
// back as written.
func FuzzRecordRoundTrip(f *testing.F) {
	f.Add(byte('A'), int64(5), []byte{10, 1, 2, 3}, "ns/pod/c")
	f.Add(byte('R'), int64(-5), bytes.Repeat([]byte{0xfd}, 16), "x")
	f.Fuzz(func(t *testing.T, kind byte, ts int64, ip []byte, owner string) {
		addr, ok := netip.AddrFromSlice(ip)
		if !ok || addr.Is4In6() || checkOwner(owner) != nil {
			return
		}
		r := record{kind: "ARQ"[int(kind)%3], time: ts, addr: addr, owner: owner}
		line := appendRecord(nil, r)
		got, err := parseRecord(line[:len(line)-1])
		if err != nil || got != r {
			t.Fatalf("%+v written as %q read back as %+v, %v", r, line, got, err)
		}
	})
}
