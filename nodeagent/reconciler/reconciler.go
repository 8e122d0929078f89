package reconciler

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Target is the installed state: a kernel map, as the Reconciler sees it.
// bpf.Map[K, V] satisfies it.
//
// The Reconciler calls these methods from its one goroutine only, never
// concurrently. The slices passed in are the Reconciler's: they are valid
// for the call only and must not be kept.
type Target[K comparable, V comparable] interface {
	// PutBatch creates or replaces keys[i] with vals[i] (len(keys) ==
	// len(vals) > 0) and returns how many entries, from the start of the
	// slices, it wrote before an error. The entry at the returned index
	// failed and the ones after it may or may not have been written; the
	// Reconciler writes them again.
	PutBatch(keys []K, vals []V) (int, error)
	// DeleteBatch deletes keys (len > 0) and returns how many, from the
	// start, it handled before an error. A missing key is not an error.
	DeleteBatch(keys []K) (int, error)
	// Iterate calls fn for every entry until fn returns false. fn does
	// not call back into the Target.
	Iterate(fn func(K, V) bool) error
}

// Observer is told about each reconcile round, for metrics. Its methods
// are called from the Reconciler's goroutine and must not block.
type Observer interface {
	// Applied reports a round that wrote puts entries and deleted
	// deletes entries in took (the time spent in the Target's calls).
	Applied(puts, deletes int, took time.Duration)
	// Failed reports a failed Target call; its keys will be retried.
	Failed(err error)
}

// Config configures a Reconciler. The zero value of every field but Name
// means its default.
type Config struct {
	// Name names the map in errors and Status, e.g. "ipcache". Required.
	Name string
	// BatchSize is the most keys passed to one PutBatch or DeleteBatch.
	// Zero means DefaultBatchSize.
	BatchSize int
	// RetryMin and RetryMax bound the pause before writing failed keys
	// again: it starts at RetryMin, doubles after every failed retry up
	// to RetryMax, is jittered down by up to a quarter (never below
	// RetryMin), and starts over once every key is written. Zero means
	// DefaultRetryMin and DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// PruneInterval is how often the Reconciler reads the whole Target
	// and compares it with the table, to repair drift: entries that
	// something else wrote, changed or deleted. Zero means
	// DefaultPruneInterval.
	PruneInterval time.Duration
	// Observer, if not nil, is told about every round and failure.
	Observer Observer
}

// Defaults for the zero fields of Config.
const (
	DefaultBatchSize     = 4096
	DefaultRetryMin      = 10 * time.Millisecond
	DefaultRetryMax      = 10 * time.Second
	DefaultPruneInterval = time.Minute
)

var (
	// ErrConfig is wrapped by every error New returns for a bad Config
	// or argument.
	ErrConfig = errors.New("invalid reconciler configuration")
	// ErrTableInUse is returned by New for a Table that another
	// Reconciler already reads.
	ErrTableInUse = errors.New("table already feeds a reconciler")
	// ErrRunning is returned by Run while another Run of the same
	// Reconciler is in progress.
	ErrRunning = errors.New("reconciler already running")
)

// Validate checks the config.
func (c Config) Validate() error {
	if c.Name == "" {
		return fmt.Errorf("%w: Name is empty: name the map, e.g. \"ipcache\"", ErrConfig)
	}
	if c.BatchSize < 0 || c.RetryMin < 0 || c.RetryMax < 0 || c.PruneInterval < 0 {
		return fmt.Errorf("%w: %s: BatchSize, RetryMin, RetryMax and PruneInterval must not be negative (zero means the default)", ErrConfig, c.Name)
	}
	if d := c.withDefaults(); d.RetryMax < d.RetryMin {
		return fmt.Errorf("%w: %s: RetryMax %s is below RetryMin %s", ErrConfig, c.Name, d.RetryMax, d.RetryMin)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.RetryMin == 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax == 0 {
		c.RetryMax = max(DefaultRetryMax, c.RetryMin)
	}
	if c.PruneInterval == 0 {
		c.PruneInterval = DefaultPruneInterval
	}
	return c
}

// Status is a snapshot of a Reconciler's state and counters.
type Status struct {
	Name      string
	Desired   int // entries in the table
	Installed int // entries the Reconciler believes the Target holds
	// Pending counts keys changed but not yet written: changes the
	// Reconciler has not taken yet plus failed keys awaiting a retry.
	Pending int
	Rounds  int64 // reconcile rounds run, full compares included
	Puts    int64 // entries written
	Deletes int64 // entries deleted
	Errors  int64 // failed Target calls
	// LastError and LastErrorAt describe the latest failed Target call.
	// They stay set after recovery; Pending and Synced tell whether the
	// Target has caught up since.
	LastError   string
	LastErrorAt time.Time
	// Synced is true once the Target has held the whole table after
	// MarkReady: the first full compare is done and every key it wrote
	// went in. It stays true.
	Synced    bool
	LastPrune time.Time // end of the latest full compare
	// Applied is the table's Seq up to which every change is in the
	// Target (0 until the first full compare succeeds).
	Applied uint64
}

// Reconciler makes a Target equal to a Table, writing only the
// difference. See the package documentation for the algorithm.
type Reconciler[K comparable, V comparable] struct {
	table   *Table[K, V]
	target  Target[K, V]
	cfg     Config
	synced  chan struct{}
	running atomic.Bool

	// The fields below belong to the Run goroutine.

	// installed is what the Target holds, as far as the Reconciler
	// knows: read at every full compare, then kept by its own writes.
	installed map[K]V
	// retry holds keys whose write failed, with their latest desired
	// state. A fresh change to such a key takes it out of retry: the
	// change is written at once.
	retry map[K]change[V]
	// spare is an empty map, swapped in for the dirty or retry set so
	// that rounds do not allocate.
	spare    map[K]change[V]
	plan     plan[K, V]
	needFull bool   // the Target could not be read: compare all again
	fullDone bool   // a full compare has completed since Run started
	taken    uint64 // the table's Seq at the last take: what a clean round has applied
	delay    time.Duration
	timer    *time.Timer
	armed    bool // timer runs for a retry

	mu sync.Mutex
	// mu guards st.
	st Status
}

// New returns a Reconciler that makes target equal to t. It takes t: a
// table feeds one Reconciler.
func New[K comparable, V comparable](t *Table[K, V], target Target[K, V], cfg Config) (*Reconciler[K, V], error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if t == nil || target == nil {
		return nil, fmt.Errorf("%w: %s: New needs a table and a target", ErrConfig, cfg.Name)
	}
	if !t.inUse.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("%s: %w", cfg.Name, ErrTableInUse)
	}
	cfg = cfg.withDefaults()
	return &Reconciler[K, V]{
		table:  t,
		target: target,
		cfg:    cfg,
		synced: make(chan struct{}),
		retry:  make(map[K]change[V]),
		spare:  make(map[K]change[V]),
		delay:  cfg.RetryMin,
		st:     Status{Name: cfg.Name},
	}, nil
}

// Synced is closed once the Target has held the whole table after
// MarkReady (see Status.Synced).
func (r *Reconciler[K, V]) Synced() <-chan struct{} { return r.synced }

// Status returns the Reconciler's state. It is safe from any goroutine.
func (r *Reconciler[K, V]) Status() Status {
	r.mu.Lock()
	st := r.st
	r.mu.Unlock()
	st.Desired = r.table.Len()
	st.Pending += r.table.dirtyLen()
	return st
}

// Run waits for the table to be ready, makes the Target equal to it, and
// then keeps it equal until ctx ends. Failed writes are retried with
// backoff for as long as Run runs, so it returns nil when ctx ends, and
// ErrRunning if called while another Run is in progress. It runs on the
// caller's goroutine and starts none.
func (r *Reconciler[K, V]) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return fmt.Errorf("%s: %w", r.cfg.Name, ErrRunning)
	}
	defer r.running.Store(false)

	select {
	case <-ctx.Done():
		return nil
	case <-r.table.readyCh:
	}

	r.timer = time.NewTimer(time.Hour)
	r.timer.Stop()
	r.armed = false
	defer r.timer.Stop()
	prune := time.NewTicker(r.cfg.PruneInterval)
	defer prune.Stop()

	r.fullDone = false
	r.full()
	for {
		var wake <-chan struct{}
		if !r.needFull {
			// Until the Target has been read there is nothing to
			// compare changes with; the full compare takes them.
			wake = r.table.wake
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
			r.incremental()
		case <-r.timer.C:
			r.armed = false
			if r.needFull {
				r.full()
			} else {
				r.retryFailed()
			}
		case <-prune.C:
			r.full()
		}
	}
}

// full reads the whole Target and writes the difference to the table.
func (r *Reconciler[K, V]) full() {
	if r.installed == nil {
		r.installed = make(map[K]V, r.table.Len())
	} else {
		clear(r.installed)
	}
	err := r.target.Iterate(func(k K, v V) bool {
		r.installed[k] = v
		return true
	})
	if err != nil {
		// Write nothing: without the Target's content, a delete could
		// not be told from a no-op. The map keeps serving what it holds.
		r.needFull = true
		r.failed(fmt.Errorf("reconcile %s: read map: %w", r.cfg.Name, err))
		r.finish(0, 0, 0, true)
		return
	}
	r.needFull = false
	// The full compare supersedes every change and failed write so far.
	clear(r.retry)
	r.plan.reset()
	desired, seq := r.table.snapshot()
	r.taken = seq
	r.plan.diff(desired, r.installed)
	puts, dels, took, ok := r.apply()
	r.fullDone = true
	if ok {
		r.delay = r.cfg.RetryMin
	}
	r.mu.Lock()
	r.st.LastPrune = time.Now()
	r.mu.Unlock()
	r.finish(puts, dels, took, !ok)
}

// incremental writes the changes made to the table since the last round.
func (r *Reconciler[K, V]) incremental() {
	taken, seq := r.table.takeDirty(r.spare)
	r.taken = seq
	r.plan.reset()
	for k, c := range taken {
		delete(r.retry, k)
		r.plan.add(r.installed, k, c)
	}
	clear(taken)
	r.spare = taken
	puts, dels, took, ok := r.apply()
	r.finish(puts, dels, took, !ok)
}

// retryFailed writes the keys of failed writes again.
func (r *Reconciler[K, V]) retryFailed() {
	batch := r.retry
	r.retry = r.spare
	r.plan.reset()
	for k, c := range batch {
		r.plan.add(r.installed, k, c)
	}
	clear(batch)
	r.spare = batch
	puts, dels, took, ok := r.apply()
	if ok && len(r.retry) == 0 {
		r.delay = r.cfg.RetryMin
	}
	r.finish(puts, dels, took, !ok)
}

// apply writes r.plan to the Target: all puts first, then all deletes,
// BatchSize keys per call. Puts first means no desired key is ever
// missing because of the order of writes, and an LPM lookup never falls
// through to a less specific prefix that is about to go. A failed call
// stops that kind of write for the round: its failed and unattempted keys
// go to the retry set. Deletes still run after failed puts: they only
// remove keys nobody wants, and free room in a full map.
func (r *Reconciler[K, V]) apply() (puts, dels int, took time.Duration, ok bool) {
	p := &r.plan
	if len(p.putKeys) == 0 && len(p.delKeys) == 0 {
		return 0, 0, 0, true
	}
	ok = true
	start := time.Now()
	bs := r.cfg.BatchSize
	for i := 0; i < len(p.putKeys); i += bs {
		keys, vals := p.putKeys[i:min(i+bs, len(p.putKeys))], p.putVals[i:min(i+bs, len(p.putKeys))]
		n, err := r.target.PutBatch(keys, vals)
		if err == nil {
			n = len(keys)
		}
		n = max(0, min(n, len(keys)))
		for j := range n {
			r.installed[keys[j]] = vals[j]
		}
		puts += n
		if err != nil {
			ok = false
			r.failed(fmt.Errorf("reconcile %s: put %d entries: %w", r.cfg.Name, len(keys), err))
			for j := i + n; j < len(p.putKeys); j++ {
				r.retry[p.putKeys[j]] = change[V]{val: p.putVals[j]}
			}
			break
		}
	}
	for i := 0; i < len(p.delKeys); i += bs {
		keys := p.delKeys[i:min(i+bs, len(p.delKeys))]
		n, err := r.target.DeleteBatch(keys)
		if err == nil {
			n = len(keys)
		}
		n = max(0, min(n, len(keys)))
		for _, k := range keys[:n] {
			delete(r.installed, k)
		}
		dels += n
		if err != nil {
			ok = false
			r.failed(fmt.Errorf("reconcile %s: delete %d entries: %w", r.cfg.Name, len(keys), err))
			for _, k := range p.delKeys[i+n:] {
				r.retry[k] = change[V]{del: true}
			}
			break
		}
	}
	return puts, dels, time.Since(start), ok
}

// failed records a failed Target call.
func (r *Reconciler[K, V]) failed(err error) {
	r.mu.Lock()
	r.st.Errors++
	r.st.LastError = err.Error()
	r.st.LastErrorAt = time.Now()
	r.mu.Unlock()
	if r.cfg.Observer != nil {
		r.cfg.Observer.Failed(err)
	}
}

// finish ends a round: it arms the retry timer if something failed,
// publishes the counters and closes Synced once the Target holds the
// whole table.
func (r *Reconciler[K, V]) finish(puts, dels int, took time.Duration, failed bool) {
	if (failed || len(r.retry) > 0 || r.needFull) && !r.armed {
		r.timer.Reset(r.nextDelay())
		r.armed = true
	}
	synced := r.fullDone && !r.needFull && len(r.retry) == 0
	r.mu.Lock()
	r.st.Rounds++
	r.st.Puts += int64(puts)
	r.st.Deletes += int64(dels)
	r.st.Installed = len(r.installed)
	r.st.Pending = len(r.retry)
	if synced {
		r.st.Applied = r.taken
	}
	justSynced := synced && !r.st.Synced
	if justSynced {
		r.st.Synced = true
	}
	r.mu.Unlock()
	if justSynced {
		close(r.synced)
	}
	if r.cfg.Observer != nil && puts+dels > 0 {
		r.cfg.Observer.Applied(puts, dels, took)
	}
}

// nextDelay returns the pause before the next retry and doubles the one
// after it, up to RetryMax.
func (r *Reconciler[K, V]) nextDelay() time.Duration {
	d := jitter(r.delay, r.cfg.RetryMin)
	r.delay = min(2*r.delay, r.cfg.RetryMax)
	return d
}

// jitter takes up to a quarter off d, but not below floor, so that
// retries of several maps do not run in lockstep.
func jitter(d, floor time.Duration) time.Duration {
	if q := int64(d / 4); q > 0 {
		d -= time.Duration(rand.Int64N(q + 1))
	}
	return max(d, floor)
}

// plan is the writes of one round, in the buffers the Target is handed.
// It is reused across rounds.
type plan[K comparable, V comparable] struct {
	putKeys []K
	putVals []V
	delKeys []K
}

func (p *plan[K, V]) reset() {
	p.putKeys, p.putVals, p.delKeys = p.putKeys[:0], p.putVals[:0], p.delKeys[:0]
}

func (p *plan[K, V]) put(k K, v V) {
	p.putKeys = append(p.putKeys, k)
	p.putVals = append(p.putVals, v)
}

func (p *plan[K, V]) del(k K) { p.delKeys = append(p.delKeys, k) }

// diff plans what makes installed equal to desired: puts of missing or
// different entries, and deletes of entries desired does not hold.
func (p *plan[K, V]) diff(desired, installed map[K]V) {
	found := 0 // installed keys that are desired
	for k, v := range desired {
		iv, ok := installed[k]
		if ok {
			found++
		}
		if !ok || iv != v {
			p.put(k, v)
		}
	}
	if found == len(installed) {
		return // nothing installed is unwanted: skip a lookup per entry
	}
	for k := range installed {
		if _, ok := desired[k]; !ok {
			p.del(k)
		}
	}
}

// add plans what brings k from its installed state to c, if anything.
func (p *plan[K, V]) add(installed map[K]V, k K, c change[V]) {
	iv, ok := installed[k]
	switch {
	case c.del && ok:
		p.del(k)
	case !c.del && (!ok || iv != c.val):
		p.put(k, c.val)
	}
}
