package health

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestMetaRoundTrip(t *testing.T) {
	t.Parallel()
	for _, m := range []Meta{
		{},
		{Cluster: "prod-eu", Version: "v0.4.1"},
		{
			Cluster:  "c1",
			NodeIPs:  []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("2001:db8::5")},
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.5.0/24"), netip.MustParsePrefix("fd00:6d73:0:5::/64"), netip.MustParsePrefix("0.0.0.0/0")},
			Version:  "v1.0.0-ünïcode",
		},
	} {
		for _, flags := range []byte{0, flagLeaving, flagRestarting} {
			b, err := m.encode(flags)
			if err != nil {
				t.Fatalf("encode %+v: %v", m, err)
			}
			got, gotFlags, err := decodeMeta(b)
			if err != nil || !got.Equal(m) || gotFlags != flags {
				t.Fatalf("decode(encode(%+v)) = %+v, %d, %v", m, got, gotFlags, err)
			}
		}
	}
	// Version 1, what agents before flagRestarting send, still decodes.
	b1, _ := Meta{Cluster: "c", Version: "v0"}.encode(flagLeaving)
	b1[0] = 1
	if got, flags, err := decodeMeta(b1); err != nil || got.Cluster != "c" || flags != flagLeaving {
		t.Errorf("version 1: %+v, %d, %v", got, flags, err)
	}
	// A newer version with a field appended still decodes.
	b, _ := Meta{Cluster: "c", Version: "v9"}.encode(0)
	b[0] = metaVersion + 1
	b[1] |= 0x80
	got, _, err := decodeMeta(append(b, 1, 2, 3))
	if err != nil || got.Cluster != "c" || got.Version != "v9" {
		t.Errorf("newer version: %+v, %v", got, err)
	}
}

func TestMetaErrors(t *testing.T) {
	t.Parallel()
	ips := make([]netip.Addr, 30)
	cidrs := make([]netip.Prefix, 30)
	for i := range ips {
		ips[i] = netip.AddrFrom16([16]byte{0xfd, byte(i)})
		cidrs[i] = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 1, byte(i)}), 64)
	}
	for _, tt := range []struct {
		name string
		m    Meta
		want string
	}{
		{"too big", Meta{NodeIPs: ips, PodCIDRs: cidrs}, "more than memberlist's 512"},
		{"too many IPs", Meta{NodeIPs: make([]netip.Addr, 33)}, "at most 32"},
		{"zero IP", Meta{NodeIPs: []netip.Addr{{}}}, "node IP"},
		{"mapped IP", Meta{NodeIPs: []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.1")}}, "node IP"},
		{"zoned IP", Meta{NodeIPs: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}}, "node IP"},
		{"host bits", Meta{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.1/24")}}, "host bits"},
		{"long cluster", Meta{Cluster: strings.Repeat("c", 129)}, "at most 128"},
		{"control character", Meta{Version: "v\x00"}, "print"},
		{"not UTF-8", Meta{Version: "\xff"}, "UTF-8"},
	} {
		err := tt.m.Validate()
		if !errors.Is(err, ErrMeta) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want ErrMeta about %q", tt.name, err, tt.want)
		}
	}
	good, _ := Meta{Cluster: "c", NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}.encode(0)
	for _, tt := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"one byte", []byte{1}},
		{"version 0", []byte{0, 0, 0, 0, 0, 0}},
		{"unknown flag", []byte{2, 4, 0, 0, 0, 0}},
		{"restarting in version 1", []byte{1, flagRestarting, 0, 0, 0, 0}},
		{"truncated", good[:len(good)-1]},
		{"trailing", append(bytes.Clone(good), 0)},
		{"bad family", []byte{1, 0, 0, 0, 1, 5, 1, 2, 3, 4, 0}},
		{"long prefix", []byte{1, 0, 0, 0, 0, 1, 4, 10, 0, 0, 0, 33}},
		{"mapped", append([]byte{1, 0, 0, 0, 1, 6}, append(netip.MustParseAddr("::ffff:10.0.0.1").AsSlice(), 0)...)},
	} {
		if _, _, err := decodeMeta(tt.b); !errors.Is(err, ErrMeta) {
			t.Errorf("%s: decode %x: %v, want ErrMeta", tt.name, tt.b, err)
		}
	}
}

// FuzzDecodeMeta: any bytes a member sends decode to an error or to a meta
// that encodes back to the same bytes (for this version), never a panic.
func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{
		{},
		{Cluster: "c1", Version: "v1", NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("2001:db8::5")},
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.5.0/24"), netip.MustParsePrefix("fd00::/64")}},
	} {
		b, _ := m.encode(flagLeaving)
		f.Add(b)
		b, _ = m.encode(flagRestarting)
		f.Add(b)
		b[0] = 1
		f.Add(b)
	}
	f.Add([]byte{2, 0xff, 0, 0, 0, 0, 9, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, flags, err := decodeMeta(b)
		if err != nil {
			if !errors.Is(err, ErrMeta) {
				t.Fatalf("error %v does not wrap ErrMeta", err)
			}
			return
		}
		again, err := m.encode(flags)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", m, err)
		}
		if b[0] == metaVersion && !bytes.Equal(again, b) {
			t.Fatalf("%x decodes to %+v, which encodes to %x", b, m, again)
		}
		if m2, flags2, err := decodeMeta(again); err != nil || !m2.Equal(m) || flags2 != flags {
			t.Fatalf("re-decode of %+v: %+v, %v", m, m2, err)
		}
	})
}
