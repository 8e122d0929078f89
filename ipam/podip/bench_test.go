package podip_test

import (
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/ipam/podip"
)

// histogram counts latencies in log-linear buckets: 16 per power of two,
// so a quantile is within about 6% of the true value.
type histogram struct {
	counts [64 * 32]uint64
	n      uint64
}

func bucket(v uint64) int {
	shift := max(bits.Len64(v)-5, 0)
	return shift*32 + int(v>>shift)
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucket(uint64(max(d, 0)))]++
	h.n++
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the upper bound of the bucket holding quantile q.
func (h *histogram) quantile(q float64) time.Duration {
	target := uint64(q*float64(h.n) + 0.5)
	var sum uint64
	for i, c := range h.counts {
		sum += c
		if c > 0 && sum >= target {
			shift := i / 32
			return time.Duration((uint64(i%32)+1)<<shift - 1)
		}
	}
	return 0
}

func (h *histogram) report(b *testing.B) {
	b.ReportMetric(float64(h.quantile(0.5)), "p50-ns")
	b.ReportMetric(float64(h.quantile(0.99)), "p99-ns")
	b.ReportMetric(float64(h.quantile(0.999)), "p99.9-ns")
}

// benchWindow is how many pods each benchmark goroutine keeps: after that,
// every allocation is followed by the release of the oldest pod, as on a
// node where pods come and go.
const benchWindow = 200

// BenchmarkAllocate measures Allocate, crash-safe as in production (the
// journal on this machine's disk, the default 100ms group commit and 30s
// quarantine), on one goroutine; each op is one allocation plus, once the
// window is full, one release. The fake clock moves 1ms per op, so about
// 30,000 addresses sit in quarantine.
func BenchmarkAllocate(b *testing.B) {
	clock := newFakeClock()
	a := mustOpen(b, podip.Config{Dir: b.TempDir(), Clock: clock}, "10.0.0.0/16")
	var h histogram
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		clock.Advance(time.Millisecond)
		owner := "default/pod-" + strconv.Itoa(i)
		t0 := time.Now()
		_, err := a.Allocate(owner, ipam.IPv4)
		h.record(time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		if i >= benchWindow {
			if err := a.Release("default/pod-" + strconv.Itoa(i-benchWindow)); err != nil {
				b.Fatal(err)
			}
		}
		i++
	}
	b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "allocs/s")
	h.report(b)
	reportJournal(b, a)
}

// BenchmarkAllocateParallel is BenchmarkAllocate from GOMAXPROCS
// goroutines (b.RunParallel), dual stack.
func BenchmarkAllocateParallel(b *testing.B) {
	for _, dual := range []bool{false, true} {
		b.Run(map[bool]string{false: "ipv4", true: "dual"}[dual], func(b *testing.B) {
			clock := newFakeClock()
			a := mustOpen(b, podip.Config{Dir: b.TempDir(), Clock: clock}, "10.0.0.0/16", "fd00::/112")
			var (
				mu    sync.Mutex
				total histogram
				ids   atomic.Int64
				ops   atomic.Int64
			)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				g := ids.Add(1)
				var h histogram
				i := 0
				for pb.Next() {
					clock.Advance(time.Millisecond)
					owner := fmt.Sprintf("ns-%d/pod-%d", g, i)
					t0 := time.Now()
					var err error
					if dual {
						_, _, err = a.AllocateDual(owner)
					} else {
						_, err = a.Allocate(owner, ipam.IPv4)
					}
					h.record(time.Since(t0))
					if err != nil {
						b.Error(err)
						return
					}
					if i >= benchWindow {
						if err := a.Release(fmt.Sprintf("ns-%d/pod-%d", g, i-benchWindow)); err != nil {
							b.Error(err)
							return
						}
					}
					i++
				}
				ops.Add(int64(i))
				mu.Lock()
				total.merge(&h)
				mu.Unlock()
			})
			b.ReportMetric(float64(ops.Load())/b.Elapsed().Seconds(), "allocs/s")
			total.report(b)
			reportJournal(b, a)
		})
	}
}

// BenchmarkOpen measures an agent restart: loading a journal of 50,000
// allocations (one op is one Open and Close).
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	cfg := podip.Config{Dir: dir, Quarantine: -1}
	a, err := podip.Open(cfg, prefixes("10.0.0.0/16"))
	if err != nil {
		b.Fatal(err)
	}
	for i := range 50000 {
		if _, err := a.Allocate("default/pod-"+strconv.Itoa(i), ipam.IPv4); err != nil {
			b.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "podip.journal"))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(fi.Size())
	for b.Loop() {
		a, err := podip.Open(cfg, prefixes("10.0.0.0/16"))
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func reportJournal(b *testing.B, a *podip.Allocator) {
	st := a.Stats()
	if st.Journal.CompactError != nil || st.Journal.Err != nil {
		b.Fatalf("journal: %+v", st.Journal)
	}
	b.ReportMetric(float64(st.Journal.Compactions), "compactions")
}
