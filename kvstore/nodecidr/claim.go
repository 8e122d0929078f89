package nodecidr

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshplane/meshplane/ipam"
	"github.com/meshplane/meshplane/kvstore"
	"github.com/meshplane/meshplane/node"
)

// Claim is the value of a node CIDR's claim key.
type Claim struct {
	Node string `json:"node"`
	Pool string `json:"pool"`
}

// NodeCIDRs is the value of a node's index key: every CIDR it holds.
type NodeCIDRs struct {
	CIDRs []netip.Prefix `json:"cidrs"`
}

// ErrPoolExhausted is returned when no pool has a free node CIDR.
var ErrPoolExhausted = errors.New("IPAM pools exhausted")

// ErrLimit is returned when a node already holds MaxPerFamily CIDRs.
var ErrLimit = errors.New("node CIDR limit reached")

// ErrNoPool is returned when no pool serves the family asked for.
var ErrNoPool = errors.New("no IPAM pool serves this family")

// DecodeClaim parses a claim key (relative to the cidrs/ prefix) and value.
func DecodeClaim(key string, value []byte) (netip.Prefix, Claim, error) {
	var c Claim
	p, err := netip.ParsePrefix(strings.ReplaceAll(key, "_", "/"))
	if err != nil || p.Masked() != p {
		return p, c, fmt.Errorf("claim key %q is not a masked CIDR", key)
	}
	if err := json.Unmarshal(value, &c); err != nil || c.Node == "" || c.Pool == "" {
		return p, c, fmt.Errorf("claim of %s: value %q is not {node, pool}", p, value)
	}
	return p, c, nil
}

func readClaims(ctx context.Context, client *kvstore.Client, keys kvstore.Keys) (map[netip.Prefix]Claim, int64, error) {
	kvs, rev, err := client.List(ctx, keys.IPAMCIDRsPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("read node CIDR claims: %w", err)
	}
	out := make(map[netip.Prefix]Claim, len(kvs))
	for _, kv := range kvs {
		p, c, err := DecodeClaim(strings.TrimPrefix(kv.Key, keys.IPAMCIDRsPrefix()), kv.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("read node CIDR claims: %w; fix or delete the key", err)
		}
		out[p] = c
	}
	return out, rev, nil
}

// Config configures a Claimer.
type Config struct {
	// Cluster is the cluster name. Required.
	Cluster string
	// Node is this node's name. Required.
	Node string
	// MaxPerFamily is how many CIDRs of one family the node may hold. Zero
	// means 4.
	MaxPerFamily int
	// Pool, if set, is the pool to claim from; otherwise pools are tried in
	// name order.
	Pool string
}

// Claimer claims node CIDRs for one node by compare-and-create.
//
// A claim is one transaction: it creates the CIDR's claim key, rewrites the
// node's index key (compared on its mod revision) and the node record (on
// the node's lease), and compares that no pool changed since the pools were
// read. Two nodes can therefore never hold the same CIDR, and because pool
// node CIDRs are aligned on one mask size and pools do not overlap, never
// overlapping ones. Candidates are picked by hashing the node's name and an
// attempt counter into the pool, so racing nodes rarely try the same CIDR;
// after many misses the claimer reads all claims and takes the first free.
type Claimer struct {
	client  *kvstore.Client
	session *kvstore.Session
	keys    kvstore.Keys
	cfg     Config
	pools   *Pools

	// wmu serialises the writes of the node record (register and the
	// claim transaction), so that the last record built is the last one
	// written and owned: publishers of different fields (usage, policy
	// revision) never leave an older record in etcd, and the session's
	// repair (kvstore.SessionConfig.Guard) never restores one.
	wmu sync.Mutex

	mu        sync.Mutex       // mu guards usage, policyRev and info
	usage     []node.CIDRUsage // last published, kept in every record written
	policyRev int64            // last published, kept in every record written
	info      node.Record      // the agent's fields, kept in every record written
}

// NewClaimer returns a claimer for cfg.Node; session holds the node's lease.
func NewClaimer(client *kvstore.Client, session *kvstore.Session, cfg Config) (*Claimer, error) {
	if cfg.Node == "" || strings.ContainsAny(cfg.Node, "/_ \n") {
		return nil, fmt.Errorf("%w: node name %q is not usable in keys", kvstore.ErrConfig, cfg.Node)
	}
	if cfg.MaxPerFamily < 0 {
		return nil, fmt.Errorf("%w: MaxPerFamily must not be negative", kvstore.ErrConfig)
	}
	if cfg.MaxPerFamily == 0 {
		cfg.MaxPerFamily = 4
	}
	pools, err := NewPools(client, cfg.Cluster)
	if err != nil {
		return nil, err
	}
	return &Claimer{client: client, session: session, keys: pools.keys, cfg: cfg, pools: pools}, nil
}

// CIDRs returns the CIDRs the node holds now (after a restart: what it held
// before), from its index key.
func (c *Claimer) CIDRs(ctx context.Context) ([]netip.Prefix, error) {
	idx, _, err := c.index(ctx)
	return idx.CIDRs, err
}

func (c *Claimer) index(ctx context.Context) (NodeCIDRs, int64, error) {
	var idx NodeCIDRs
	kv, ok, err := c.client.Get(ctx, c.keys.IPAMNode(c.cfg.Node))
	if err != nil || !ok {
		return idx, 0, err
	}
	if err := json.Unmarshal(kv.Value, &idx); err != nil {
		return idx, 0, fmt.Errorf("node CIDR index of %s: %w; fix or delete %s", c.cfg.Node, err, kv.Key)
	}
	return idx, kv.ModRevision, nil
}

// Ensure returns the node's CIDRs, claiming one of each family in fams
// that it does not hold yet, and (re-)registers the node record on the
// session's lease. A restarted node gets its own CIDRs back.
func (c *Claimer) Ensure(ctx context.Context, fams ...ipam.Family) ([]netip.Prefix, error) {
	idx, _, err := c.index(ctx)
	if err != nil {
		return nil, err
	}
	cidrs, claimed := idx.CIDRs, false
	for _, f := range fams {
		if slices.ContainsFunc(cidrs, func(p netip.Prefix) bool { return ipam.Of(p) == f }) {
			continue
		}
		p, err := c.claim(ctx, f)
		if err != nil {
			return nil, err
		}
		cidrs, claimed = append(cidrs, p), true
	}
	// A claim writes the node record in its own transaction; only a node
	// that claimed nothing (a restart) must write it here.
	if !claimed {
		if err := c.register(ctx, cidrs); err != nil {
			return nil, err
		}
	}
	return cidrs, nil
}

// ClaimMore claims one more CIDR of family f, for a node that filled the
// ones it has.
func (c *Claimer) ClaimMore(ctx context.Context, f ipam.Family) (netip.Prefix, error) {
	return c.claim(ctx, f)
}

// Publish records the node's pod IP usage in its node record, for
// `meshctl ipam nodes` and pool exhaustion warnings.
func (c *Claimer) Publish(ctx context.Context, usage []node.CIDRUsage) error {
	c.mu.Lock()
	c.usage = slices.Clone(usage)
	c.mu.Unlock()
	return c.Register(ctx)
}

// PublishPolicyRevision records in the node record the revision up to
// which the node enforces the policies (node.Record.PolicyRevision).
func (c *Claimer) PublishPolicyRevision(ctx context.Context, rev int64) error {
	c.mu.Lock()
	c.policyRev = rev
	c.mu.Unlock()
	return c.Register(ctx)
}

// SetNodeInfo sets the agent's fields of the node record (IPs, gossip
// address, labels, version, cluster ID) for every record written from now
// on; Name, PodCIDRs, Usage and PolicyRevision in r are ignored. Call
// Register to write them at once.
func (c *Claimer) SetNodeInfo(r node.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.info = r
}

// Register writes the node record with the CIDRs the node holds, on the
// session's lease.
func (c *Claimer) Register(ctx context.Context) error {
	idx, _, err := c.index(ctx)
	if err != nil {
		return err
	}
	return c.register(ctx, idx.CIDRs)
}

func (c *Claimer) record(cidrs []netip.Prefix) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.info
	r.Name, r.PodCIDRs, r.Usage, r.PolicyRevision = c.cfg.Node, cidrs, c.usage, c.policyRev
	return string(r.Encode())
}

func (c *Claimer) register(ctx context.Context, cidrs []netip.Prefix) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := c.record(cidrs)
	if err := c.session.Put(ctx, c.keys.Node(c.cfg.Node), string(b)); err != nil {
		return fmt.Errorf("register node %s: %w", c.cfg.Node, err)
	}
	return nil
}

// maxProbes is how many hashed candidates a claim tries before it reads
// every claim to find a free CIDR.
const maxProbes = 16

func (c *Claimer) claim(ctx context.Context, f ipam.Family) (netip.Prefix, error) {
	var (
		snap    snapshot
		fresh   = true
		attempt uint64
	)
	for {
		if fresh {
			var err error
			// After many misses the pool is crowded: read the claims too.
			snap, err = c.pools.read(ctx, attempt >= maxProbes)
			if err != nil {
				return netip.Prefix{}, err
			}
			fresh = false
		}
		idx, idxRev, err := c.index(ctx)
		if err != nil {
			return netip.Prefix{}, err
		}
		held := 0
		for _, p := range idx.CIDRs {
			if ipam.Of(p) == f {
				held++
			}
		}
		if held >= c.cfg.MaxPerFamily {
			return netip.Prefix{}, fmt.Errorf("claim %s CIDR for node %s: %w: it holds %d (MaxPerFamily)", f, c.cfg.Node, ErrLimit, held)
		}
		pool, cand, err := c.candidate(snap, f, attempt)
		if err != nil {
			return netip.Prefix{}, err
		}
		resp, err := c.claimNode(ctx, pool, cand, idx, idxRev, snap.versionRev)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("claim %s for node %s: %w", cand, c.cfg.Node, err)
		}
		if resp.Succeeded {
			return cand, nil
		}
		// Which compare failed? The pools changed: read them again. The
		// index changed (a concurrent claim for this node): loop. The CIDR
		// is taken: try the next candidate.
		switch {
		case modRev(resp.Responses[2]) != snap.versionRev:
			fresh = true
		case modRev(resp.Responses[1]) != idxRev:
		default:
			attempt++
			if attempt == maxProbes {
				fresh = true
			}
			if snap.claims != nil {
				snap.claims[cand] = Claim{}
			}
		}
	}
}

func modRev(r *pb.ResponseOp) int64 {
	kvs := r.GetResponseRange().Kvs
	if len(kvs) == 0 {
		return 0
	}
	return kvs[0].ModRevision
}

// claimNode runs the claim transaction, which also writes the node
// record on the session's lease; the session owns the record when it
// succeeds.
func (c *Claimer) claimNode(ctx context.Context, pool string, cand netip.Prefix, idx NodeCIDRs, idxRev, versionRev int64) (*clientv3.TxnResponse, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	record := c.record(append(slices.Clone(idx.CIDRs), cand))
	return c.session.Txn(ctx, func(lease kvstore.LeaseID) (kvstore.LeaseTxn, error) {
		return c.claimTxn(pool, cand, idx, idxRev, versionRev, lease, record), nil
	})
}

func (c *Claimer) claimTxn(pool string, cand netip.Prefix, idx NodeCIDRs, idxRev, versionRev int64, lease kvstore.LeaseID, record string) kvstore.LeaseTxn {
	claim, _ := json.Marshal(Claim{Node: c.cfg.Node, Pool: pool})
	next := NodeCIDRs{CIDRs: append(slices.Clone(idx.CIDRs), cand)}
	index, _ := json.Marshal(next)
	ck, ik, vk := c.keys.IPAMCIDR(cand.String()), c.keys.IPAMNode(c.cfg.Node), c.keys.IPAMPoolsVersion()
	nk := c.keys.Node(c.cfg.Node)
	return kvstore.LeaseTxn{
		If: []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(ck), "=", 0),
			clientv3.Compare(clientv3.ModRevision(ik), "=", idxRev),
			clientv3.Compare(clientv3.ModRevision(vk), "=", versionRev),
		},
		Then: []clientv3.Op{
			clientv3.OpPut(ck, string(claim)),
			clientv3.OpPut(ik, string(index)),
			clientv3.OpPut(nk, record, clientv3.WithLease(clientv3.LeaseID(lease))),
		},
		Else: []clientv3.Op{clientv3.OpGet(ck), clientv3.OpGet(ik), clientv3.OpGet(vk)},
		// The transaction rewrites the owned node record: Txn keeps the
		// guard from repairing it back until the session owns the new one.
		Owned: []kvstore.KeyValue{{Key: nk, Value: []byte(record)}},
	}
}

// candidate picks the CIDR to try: by hash while attempt < maxProbes, then
// the first CIDR not in snap.claims.
func (c *Claimer) candidate(snap snapshot, f ipam.Family, attempt uint64) (string, netip.Prefix, error) {
	var pools []ipam.Pool
	for _, p := range snap.pools {
		if cidrs, _ := p.CIDRs(f); len(cidrs) > 0 && (c.cfg.Pool == "" || c.cfg.Pool == p.Name) {
			pools = append(pools, p)
		}
	}
	if len(pools) == 0 {
		if c.cfg.Pool != "" {
			return "", netip.Prefix{}, fmt.Errorf("claim %s CIDR: %w: pool %q does not exist or has no %s CIDRs", f, ErrNoPool, c.cfg.Pool, f)
		}
		return "", netip.Prefix{}, fmt.Errorf("claim %s CIDR: %w: add one with `meshctl ipam pool add`", f, ErrNoPool)
	}
	if snap.claims == nil {
		// Hash into the pools' combined space.
		total := new(big.Int)
		for _, p := range pools {
			total.Add(total, p.Size(f))
		}
		sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d", c.cfg.Node, attempt))
		h := new(big.Int).SetBytes(sum[:16])
		i := h.Mod(h, total)
		for _, p := range pools {
			n := p.Size(f)
			if i.Cmp(n) < 0 {
				cand, _ := p.NodeCIDR(f, i.Uint64())
				return p.Name, cand, nil
			}
			i.Sub(i, n)
		}
	}
	for _, p := range pools {
		n := p.Size(f)
		limit := uint64(1 << 24) // scan at most 16M node CIDRs of a pool
		if n.IsUint64() && n.Uint64() < limit {
			limit = n.Uint64()
		}
		for i := range limit {
			cand, _ := p.NodeCIDR(f, i)
			if _, taken := snap.claims[cand]; !taken {
				return p.Name, cand, nil
			}
		}
	}
	names := make([]string, len(pools))
	for i, p := range pools {
		names[i] = p.Name
	}
	return "", netip.Prefix{}, fmt.Errorf("claim %s CIDR for node %s: %w: every node CIDR of %s is claimed; add CIDRs to a pool, add a pool, or remove dead nodes",
		f, c.cfg.Node, ErrPoolExhausted, strings.Join(names, ", "))
}
