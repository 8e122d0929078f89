package podip

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"strconv"
	"strings"
)

// File names inside Config.Dir.
const (
	journalFile = "podip.journal"
	tempFile    = "podip.journal.tmp"
	lockFile    = "podip.lock"
)

// journalHeader is the journal's first line; a format change gets a new
// version.
const journalHeader = "meshplane podip journal v1\n"

// MaxOwnerLen is the longest owner, in bytes.
const MaxOwnerLen = 512

// maxRecordLen bounds one journal line: checksum, kind, time, the longest
// IPv6 address and the longest owner, with room to spare.
const maxRecordLen = 8 + 1 + 1 + 1 + 20 + 1 + 39 + 1 + MaxOwnerLen + 1

// ErrInvalidOwner is returned for an owner that is empty, longer than
// MaxOwnerLen bytes, or holds a control character such as a newline.
var ErrInvalidOwner = errors.New("invalid pod IP owner")

// ErrCorruptJournal is wrapped by a *CorruptJournalError.
var ErrCorruptJournal = errors.New("corrupt pod IP journal")

// CorruptJournalError reports a journal record that is damaged, or that
// contradicts the records before it, anywhere but in the torn tail that a
// crash can leave (see the package documentation). Open refuses such a
// journal rather than guess which addresses are in use.
type CorruptJournalError struct {
	Path   string
	Line   int   // 1-based; line 1 is the header
	Offset int64 // byte offset of the line
	Reason string
}

// Error says what is wrong and the safe way out: an allocator that starts
// empty is safe only because its user rebuilds the allocations from its
// other records with Reserve (the agent does, from the endpoint state files
// and etcd), so the advice names the exact command.
func (e *CorruptJournalError) Error() string {
	return fmt.Sprintf("%s: %s line %d (byte offset %d): %s; "+
		"move the file away (mv %s %s.corrupt-$(date +%%Y%%m%%dT%%H%%M%%S)) and restart the agent: "+
		"it rebuilds the allocations from the endpoint state files and etcd",
		ErrCorruptJournal, e.Path, e.Line, e.Offset, e.Reason, e.Path, e.Path)
}

func (e *CorruptJournalError) Unwrap() error { return ErrCorruptJournal }

// checkOwner validates an owner.
func checkOwner(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty: use the pod's namespace/name/container ID", ErrInvalidOwner)
	}
	if len(s) > MaxOwnerLen {
		return fmt.Errorf("%w: %d bytes long: use at most %d", ErrInvalidOwner, len(s), MaxOwnerLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: %q holds a control character at byte %d: use printable characters", ErrInvalidOwner, s, i)
		}
	}
	return nil
}

// The kinds of record.
const (
	kindAlloc      = 'A' // owner took addr at time
	kindRelease    = 'R' // owner gave addr back at time; quarantined from then on
	kindQuarantine = 'Q' // addr, last held by owner, is quarantined since time (snapshots only)
)

// record is one journal line.
type record struct {
	kind  byte
	time  int64 // Unix nanoseconds, wall clock
	addr  netip.Addr
	owner string
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const hexDigits = "0123456789abcdef"

// appendRecord appends r as one journal line:
//
//	<crc32c of the rest, 8 lowercase hex> <kind> <time> <addr> <owner>\n
func appendRecord(b []byte, r record) []byte {
	start := len(b)
	b = append(b, "00000000 "...)
	body := len(b)
	b = append(b, r.kind, ' ')
	b = strconv.AppendInt(b, r.time, 10)
	b = append(b, ' ')
	b = r.addr.AppendTo(b)
	b = append(b, ' ')
	b = append(b, r.owner...)
	sum := crc32.Checksum(b[body:], castagnoli)
	for i := range 8 {
		b[start+i] = hexDigits[sum>>(28-4*i)&0xf]
	}
	return append(b, '\n')
}

// errDamaged is wrapped by parseRecord's errors about a line whose
// checksum does not hold: such a line may be one that a crash tore. A line
// whose checksum holds but whose content is wrong was written that way, and
// is never taken for a torn one.
var errDamaged = errors.New("damaged record")

// parseRecord parses one journal line without its newline. It accepts
// exactly what appendRecord writes.
func parseRecord(line []byte) (record, error) {
	if len(line) > maxRecordLen {
		return record{}, fmt.Errorf("%w: record of %d bytes is longer than %d", errDamaged, len(line), maxRecordLen)
	}
	if len(line) < 9 || line[8] != ' ' {
		return record{}, fmt.Errorf("%w: record too short or without a checksum", errDamaged)
	}
	var sum uint32
	for _, c := range line[:8] {
		i := strings.IndexByte(hexDigits, c)
		if i < 0 {
			return record{}, fmt.Errorf("%w: checksum %q is not 8 lowercase hex digits", errDamaged, line[:8])
		}
		sum = sum<<4 | uint32(i)
	}
	body := line[9:]
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return record{}, fmt.Errorf("%w: checksum mismatch (%08x in the record, %08x computed)", errDamaged, sum, got)
	}
	// From here on the bytes are what the allocator wrote (or a collision
	// of CRC-32C); still, nothing is taken on trust.
	if len(body) < 2 || body[1] != ' ' {
		return record{}, errors.New("record without a kind")
	}
	r := record{kind: body[0]}
	switch r.kind {
	case kindAlloc, kindRelease, kindQuarantine:
	default:
		return record{}, fmt.Errorf("unknown record kind %q", r.kind)
	}
	ts, rest, ok := bytes.Cut(body[2:], []byte{' '})
	if !ok {
		return record{}, errors.New("record without an address")
	}
	t, err := strconv.ParseInt(string(ts), 10, 64)
	if err != nil || !bytes.Equal(strconv.AppendInt(nil, t, 10), ts) {
		return record{}, fmt.Errorf("bad time %q", ts)
	}
	r.time = t
	as, owner, ok := bytes.Cut(rest, []byte{' '})
	if !ok {
		return record{}, errors.New("record without an owner")
	}
	a, err := netip.ParseAddr(string(as))
	if err != nil || a.Zone() != "" || a.Is4In6() || a.String() != string(as) {
		return record{}, fmt.Errorf("bad address %q", as)
	}
	r.addr = a
	r.owner = string(owner)
	if err := checkOwner(r.owner); err != nil {
		return record{}, err
	}
	return r, nil
}

// entry is an allocation or a quarantined address as the journal left it.
type entry struct {
	addr  netip.Addr
	owner string
	time  int64  // allocation or release time, Unix nanoseconds
	seq   uint64 // order of the record in the journal
}

// journalState is the state a journal describes, before it meets the
// CIDRs.
type journalState struct {
	allocs     map[netip.Addr]entry
	owners     map[string][2]netip.Addr
	quarantine map[netip.Addr]entry
	records    int   // records after the header
	validLen   int64 // bytes of the header and the valid records
	dropped    int64 // bytes of torn tail dropped after them
	fresh      bool  // no complete header: (re)write the file from scratch
}

// parseJournal replays a journal's bytes. A tail that holds no valid record
// (a record torn by a crash, or zeros a file system left after a power
// loss) is dropped and counted; a bad record followed by a valid one is a
// *CorruptJournalError, as is a valid record that contradicts the state
// before it (an address allocated twice, a release by an owner that does
// not hold the address).
func parseJournal(path string, data []byte) (*journalState, error) {
	st := &journalState{
		allocs:     make(map[netip.Addr]entry),
		owners:     make(map[string][2]netip.Addr),
		quarantine: make(map[netip.Addr]entry),
	}
	if len(data) < len(journalHeader) && bytes.HasPrefix([]byte(journalHeader), data) {
		// Empty, or the crash hit while the file was being created.
		st.fresh, st.dropped = true, int64(len(data))
		return st, nil
	}
	if !bytes.HasPrefix(data, []byte(journalHeader)) {
		return nil, &CorruptJournalError{Path: path, Line: 1, Reason: fmt.Sprintf("not a pod IP journal: the first line is not %q", journalHeader[:len(journalHeader)-1])}
	}
	off, line := len(journalHeader), 1
	for off < len(data) {
		line++
		end, next := len(data), len(data)
		if i := bytes.IndexByte(data[off:], '\n'); i >= 0 {
			end, next = off+i, off+i+1
		}
		var r record
		var err error
		if next == end {
			err = fmt.Errorf("%w: record without its newline", errDamaged)
		} else {
			r, err = parseRecord(data[off:end])
		}
		if err != nil {
			if !errors.Is(err, errDamaged) || holdsRecord(data[next:]) {
				return nil, &CorruptJournalError{Path: path, Line: line, Offset: int64(off), Reason: err.Error()}
			}
			st.dropped = int64(len(data) - off)
			break
		}
		if err := st.apply(r, uint64(line)); err != nil {
			return nil, &CorruptJournalError{Path: path, Line: line, Offset: int64(off), Reason: err.Error()}
		}
		st.records++
		off = next
	}
	st.validLen = int64(len(data)) - st.dropped
	return st, nil
}

// holdsRecord reports whether data holds a complete line whose checksum
// holds: proof that what comes before it is not a torn tail.
func holdsRecord(data []byte) bool {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return false
		}
		if _, err := parseRecord(data[:i]); !errors.Is(err, errDamaged) {
			return true
		}
		data = data[i+1:]
	}
	return false
}

// apply replays one record.
func (st *journalState) apply(r record, seq uint64) error {
	fi := addrIndex(r.addr)
	switch r.kind {
	case kindAlloc:
		if e, ok := st.allocs[r.addr]; ok {
			return fmt.Errorf("%s allocated to %q, but it is held by %q", r.addr, r.owner, e.owner)
		}
		held := st.owners[r.owner]
		if held[fi].IsValid() {
			return fmt.Errorf("%s allocated to %q, which already holds %s", r.addr, r.owner, held[fi])
		}
		held[fi] = r.addr
		st.owners[r.owner] = held
		st.allocs[r.addr] = entry{addr: r.addr, owner: r.owner, time: r.time, seq: seq}
		// An address quarantined before may be reused once its quarantine
		// has passed.
		delete(st.quarantine, r.addr)
	case kindRelease:
		if e, ok := st.allocs[r.addr]; !ok || e.owner != r.owner {
			return fmt.Errorf("%s released by %q, which does not hold it", r.addr, r.owner)
		}
		delete(st.allocs, r.addr)
		held := st.owners[r.owner]
		held[fi] = netip.Addr{}
		if held == ([2]netip.Addr{}) {
			delete(st.owners, r.owner)
		} else {
			st.owners[r.owner] = held
		}
		st.quarantine[r.addr] = entry{addr: r.addr, owner: r.owner, time: r.time, seq: seq}
	case kindQuarantine:
		if e, ok := st.allocs[r.addr]; ok {
			return fmt.Errorf("%s quarantined, but it is held by %q", r.addr, e.owner)
		}
		st.quarantine[r.addr] = entry{addr: r.addr, owner: r.owner, time: r.time, seq: seq}
	}
	return nil
}
