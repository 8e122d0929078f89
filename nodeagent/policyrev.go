package nodeagent

import (
	"context"
	"time"
)

// The agent publishes in its node record (node.Record.PolicyRevision) the
// etcd revision up to which it enforces the policies, so that
// `meshctl policy list --agent` can tell which nodes a policy has
// reached. "Enforces" means installed, not merely received: every change
// of policies/ up to the revision has been delivered to the policy
// engine (kvstore.Cache.DeliveredRevision), and every table change it
// caused (policy entries, endpoint flags, the ipcache entries of ipBlock
// CIDR identities) has been written by the map reconcilers
// (reconciler.Table.Seq against Status.Applied).
//
// Every policyRevInterval the agent notes a target: the policy cache's
// delivered revision and the tables' Seq at that moment. A target whose
// Seqs every reconciler has applied is reached; the highest reached
// revision is published, at most once per interval and only when it
// grows. Targets are kept until reached, so a busy table (the ipcache
// churns with endpoints) never starves the check.

// policyRevInterval is how often the revision is checked and, when it
// grew, published: at most one node record write per interval.
const policyRevInterval = time.Second

// policyRevTarget is a revision and the table Seqs that enforce it.
type policyRevTarget struct {
	rev  int64
	seqs map[string]uint64 // by reconciler name
}

// policyTableSeqs are the Seqs of the tables whose maps enforce policy,
// by reconciler name.
func (a *Agent) policyTableSeqs() map[string]uint64 {
	return map[string]uint64{"policy": a.polT.Seq(), "endpoints": a.epT.Seq(), "ipcache": a.ipcT.Seq()}
}

// policyRevisionLoop publishes the enforced policy revision until ctx
// ends. It runs once the agent is synced (before that, nothing is
// enforced from etcd's state).
func (a *Agent) policyRevisionLoop(ctx context.Context) {
	t := time.NewTicker(policyRevInterval)
	defer t.Stop()
	var targets []policyRevTarget
	published := int64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		polC := a.polC.Load()
		if polC == nil || !a.ready.Load() {
			continue
		}
		// The revision first, then the Seqs: every table change for a
		// policy change up to rev was made before rev was delivered.
		rev := polC.DeliveredRevision()
		if rev > 0 && (len(targets) == 0 || rev > targets[len(targets)-1].rev) && rev > published {
			targets = append(targets, policyRevTarget{rev: rev, seqs: a.policyTableSeqs()})
		}
		applied := a.appliedSeqs()
		reached := int64(0)
		for len(targets) > 0 && seqsApplied(targets[0].seqs, applied) {
			reached = targets[0].rev
			targets = targets[1:]
		}
		if reached <= published {
			continue
		}
		a.enforcedRev.Store(reached)
		if err := a.claimer.Load().PublishPolicyRevision(ctx, reached); err != nil {
			if ctx.Err() == nil {
				a.log.Warn("cannot publish the enforced policy revision in the node record; retrying", "revision", reached, "err", err)
			}
			// Try again next time: keep it as a target.
			targets = append([]policyRevTarget{{rev: reached}}, targets...)
			continue
		}
		published = reached
	}
}

// appliedSeqs are the Seqs the reconcilers have applied, by name; a
// reconciler that is not synced yet has applied nothing.
func (a *Agent) appliedSeqs() map[string]uint64 {
	out := make(map[string]uint64, len(a.recs))
	for _, r := range a.recs {
		st := r.status()
		if st.Synced {
			out[r.name] = st.Applied
		}
	}
	return out
}

func seqsApplied(want, applied map[string]uint64) bool {
	for name, seq := range want {
		if applied[name] < seq {
			return false
		}
	}
	return true
}
