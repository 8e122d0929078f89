package reconciler

import (
	"errors"
	"testing"
	"time"
)

// flaky is a Target whose calls fail while fail is set.
type flaky struct{ fail bool }

var errFlaky = errors.New("flaky")

func (f *flaky) PutBatch(keys []int, vals []int) (int, error) {
	if f.fail {
		return 0, errFlaky
	}
	return len(keys), nil
}

func (f *flaky) DeleteBatch(keys []int) (int, error) { return len(keys), nil }

func (f *flaky) Iterate(fn func(int, int) bool) error {
	if f.fail {
		return errFlaky
	}
	return nil
}

// TestBackoff drives the rounds by hand: pauses double from RetryMin to
// RetryMax while writes fail, jittered by at most a quarter, and start
// over once a retry succeeds.
func TestBackoff(t *testing.T) {
	target := &flaky{fail: true}
	table := NewTable[int, int]()
	table.MarkReady()
	table.Set(1, 1)
	r, err := New(table, target, Config{Name: "test", RetryMin: 100 * time.Millisecond, RetryMax: 800 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.timer = time.NewTimer(time.Hour)
	defer r.timer.Stop()

	// The map cannot be read: the full compare is retried.
	r.full()
	if !r.needFull || !r.armed || r.delay != 200*time.Millisecond {
		t.Fatalf("after a failed read: needFull %v, armed %v, next delay %s", r.needFull, r.armed, r.delay)
	}
	r.armed = false
	r.full()
	if r.delay != 400*time.Millisecond {
		t.Fatalf("after two failed reads, next delay %s, want 400ms", r.delay)
	}

	// Read works, writes fail: the key waits in retry.
	target.fail = false
	r.armed = false
	r.delay = r.cfg.RetryMin
	r.full() // reads the empty map, puts key 1
	if len(r.retry) != 0 || !r.st.Synced {
		t.Fatalf("after a good full compare: %d to retry, synced %v", len(r.retry), r.st.Synced)
	}
	target.fail = true
	table.Set(2, 2)
	r.incremental()
	if len(r.retry) != 1 || !r.armed {
		t.Fatalf("after a failed put: %d to retry, armed %v", len(r.retry), r.armed)
	}
	for _, want := range []time.Duration{400, 800, 800} {
		r.armed = false
		r.retryFailed()
		if r.delay != want*time.Millisecond || len(r.retry) != 1 {
			t.Fatalf("next delay %s, want %s; %d to retry", r.delay, want*time.Millisecond, len(r.retry))
		}
	}
	target.fail = false
	r.armed = false
	r.retryFailed()
	if len(r.retry) != 0 || r.delay != r.cfg.RetryMin || r.st.Errors != 6 {
		t.Fatalf("after a good retry: %d to retry, delay %s, %d errors", len(r.retry), r.delay, r.st.Errors)
	}
}

func TestJitter(t *testing.T) {
	for _, tt := range []struct{ d, floor, lo time.Duration }{
		{100 * time.Millisecond, 10 * time.Millisecond, 75 * time.Millisecond},
		{100 * time.Millisecond, 90 * time.Millisecond, 90 * time.Millisecond},
		{3, 1, 3}, // a quarter of 3ns is nothing
	} {
		for range 1000 {
			if got := jitter(tt.d, tt.floor); got < tt.lo || got > tt.d {
				t.Fatalf("jitter(%s, %s) = %s, want within [%s, %s]", tt.d, tt.floor, got, tt.lo, tt.d)
			}
		}
	}
}
