package controlplane

import (
	"slices"
	"testing"
	"time"
)

// TestQueue: a key is queued once (with its earliest time), keys come out
// oldest first in batches, and a closed queue drops everything.
func TestQueue(t *testing.T) {
	q := newQueue()
	t0 := time.Unix(100, 0)
	q.add("a", t0.Add(2*time.Second))
	q.add("b", t0.Add(time.Second))
	q.add("a", t0) // again, earlier: still one entry, the earlier time
	q.add("c", t0.Add(3*time.Second))
	if q.len() != 3 {
		t.Fatalf("len = %d, want 3", q.len())
	}
	select {
	case <-q.ready:
	default:
		t.Fatal("no ready token after add")
	}
	keys, since := q.take(2)
	if !slices.Equal(keys, []string{"a", "b"}) || !since[0].Equal(t0) || !since[1].Equal(t0.Add(time.Second)) {
		t.Fatalf("take(2) = %v %v", keys, since)
	}
	select {
	case <-q.ready:
	default:
		t.Fatal("no ready token while keys remain")
	}
	if keys, _ := q.take(10); !slices.Equal(keys, []string{"c"}) {
		t.Fatalf("take(10) = %v, want [c]", keys)
	}
	if keys, _ := q.take(10); keys != nil {
		t.Fatalf("take on an empty queue = %v", keys)
	}
	q.add("d", t0)
	q.close()
	q.add("e", t0)
	if q.len() != 0 {
		t.Fatalf("closed queue holds %d keys", q.len())
	}
}
