package nodeagent

import (
	"github.com/meshplane/meshplane/kvstore"
)

// guardedPrefixes are where the agent's session repairs the agent's own
// keys when someone changes or deletes them (kvstore.SessionConfig.Guard):
// its node record and its pods' endpoints. Its identity references need
// no guard: the allocator re-creates what it holds when the identity goes
// (see allocator.restorer), and the control plane's GC reads references
// only to keep identities alive.
func (a *Agent) guardedPrefixes() []string {
	return []string{a.keys.Node(a.cfg.Node), a.keys.EndpointsPrefix()}
}

// maxLoggedValue caps how much of a foreign value a repair log shows.
const maxLoggedValue = 256

// logRepair is the session's OnRepair: someone else wrote one of the
// agent's keys. The agent fixed it, so this is Warn; it repeats (with a
// growing pause) while the other writer keeps at it.
func (a *Agent) logRepair(r kvstore.Repair) {
	found := string(r.Found)
	if len(found) > maxLoggedValue {
		found = found[:maxLoggedValue] + "..."
	}
	a.log.Warn("rewrote an own etcd key that was changed behind the agent's back; if this repeats, find the other writer",
		"key", r.Key, "reason", string(r.Reason), "found", found, "foundLease", int64(r.FoundLease), "nextRepairAfter", r.Next)
}
