// Package health is the nodes' failure detector: gossip among the agents of
// a cluster with hashicorp/memberlist (SWIM with the Lifeguard extensions),
// which tells every agent within seconds that a node died, so that its
// routes and service backends leave the datapath, and that it is back; and
// which does not call a node dead because its agent is slow, paused or
// restarting. etcd is not the failure detector: node records live on long
// leases and stay the durable registry; gossip only says who is alive.
// This package alone imports memberlist.
//
// # Use
//
// One Gossip per agent, built with New from a Config. The agent passes the
// gossip addresses of the node records in etcd to Join (there is no static
// peer list; Join tries a few at random), reacts to Notify (remove a node's
// routes when it is Down, restore them when it is back), calls
// AnnounceRestart on a graceful shutdown (a restart or an upgrade) or Leave
// on a departure for good, and Close at the end. Members and Stats serve
// status commands and the gauge of members by state.
//
// # States
//
// A member is Alive, Suspect, Unresponsive, Restarting, Dead or Left as
// this member sees it. Only Dead and Left are Down (State.Down): a
// consumer removes what depends on a member then, and only then.
// memberlist reports less than that, so the states are put together here:
//
//   - Alive: memberlist's EventDelegate (NotifyJoin, NotifyUpdate). A
//     member that comes back under the same name, with a new incarnation
//     or on a new address, is Alive again (memberlist accepts a dead or
//     left member's new address at once: DeadNodeReclaimTime).
//   - Suspect: memberlist reports suspicion through no delegate, and its
//     Members list shows suspects as alive (hashicorp/memberlist#266). The
//     one trace is the log line "Suspect <name> has failed, no acks
//     received", which memberlist writes when this member's own probe
//     failed, just before it marks the member suspect: the log adapter
//     (log.go) catches it. So Suspect means "my probe failed and it has not
//     refuted yet"; suspicions heard from other members are not shown. It
//     ends on a death, on an alive message from the member (the
//     refutation; AliveDelegate), or, if that was missed, after the longest
//     suspicion timeout. Informational. TestFailureDetection guards the log
//     line: if a memberlist upgrade changes it, no member reports Suspect
//     and the test fails.
//   - Dead: memberlist declared it dead (NotifyLeave, which does not say
//     whether the member died or left: Node.State is never set, #266) and
//     the direct check confirmed it (Confirmation, below); or it was
//     Restarting and did not come back. Until the check answers, the
//     member keeps its state.
//   - Unresponsive: memberlist declared it dead, but its node answered the
//     check with a TCP handshake, and the member did not refute the death
//     within a probe interval and two gossip intervals (a false death that
//     memberlist repairs at once, such as stale gossip about a restarted
//     member's previous life, never shows): the node is up and the
//     member's process holds its socket, it only does not gossip (paused,
//     starved of CPU, hung). It is checked again until it refutes (Alive) or its node
//     refuses or stops answering (Dead). Stats.UnconfirmedDeaths counts
//     these contradicted deaths.
//   - Restarting: its meta carries the restart flag (AnnounceRestart;
//     Restarts, below), from the announcement, through memberlist's leave,
//     until it rejoins (Alive), its restart grace ends, or its node stops
//     answering TCP (Dead).
//   - Left: its meta carries the leaving flag (Leave), broadcast before
//     memberlist's leave. A member that hears of the leave before the flag
//     turns the death (under check, or Dead) into Left when the flag
//     arrives (AliveDelegate), and likewise into Restarting for the
//     restart flag; one that never gets the flag checks the member, whose
//     port is closed by then: Dead.
//
// Members keeps dead and left members for Config.DeadRetention (10 minutes)
// after their last change, longer than memberlist remembers them
// (GossipToTheDeadTime, 30 s), so that status shows recent deaths; then it
// forgets them without a Notify. Unresponsive and Restarting members are
// not forgotten: they end as Alive or Dead.
//
// # Confirmation
//
// memberlist's verdict rests on probes and acks, which a member that does
// not run cannot answer whatever the state of its node: a process stopped
// for 2.5 s, or starved of CPU on a busy host, is declared dead like a
// crashed one, and in a small cluster within 1.2-1.8 s (Small clusters,
// below). So memberlist's death is a reason to look, not the answer: this
// member opens a TCP connection to the member's gossip port itself
// (check.go), a second signal that needs nothing from the member's
// process. The kernel of the member's node completes the handshake
// whenever a socket listens there, however busy or stopped the process
// that holds it:
//
//   - handshake: the node is up and the process is there: Unresponsive.
//   - reset (connection refused): the node is up and nothing listens: the
//     process is gone (crashed, killed): Dead, at once.
//   - no answer within Timing.CheckTimeout (1 s), or the node or its
//     network unreachable: the node or the path to it is gone: Dead.
//
// The check's socket is non-blocking and its state is read from the kernel
// after every wait, also past the deadline, so a checker that is starved
// itself never takes a handshake that completed in time for a timeout.
// After a handshake it sends the cluster's stream label and closes, which
// memberlist's listener drops without a log line whenever it gets to it.
// An unresponsive member is checked again after ProbeInterval, then at
// doubling intervals up to 5 s: each check leaves a connection in the
// stalled process's accept queue until it runs again. The queue (somaxconn,
// 4096 on current kernels) fills after hours at that rate in a small
// cluster, after about 40 s in one of 500; then the kernel drops SYNs and
// the member is Dead, which for an agent hung that long is right. At most
// 64 checks run at once, each in a goroutine of its own.
//
// What the check does not see: a node whose agent is hung while its kernel
// runs keeps its routes as long as that lasts (its datapath, in the
// kernel, still forwards; status and the unresponsive gauge show it). A
// SYN lost on a lossy path right when memberlist declared the death
// confirms it. An agent of an older version checks nothing; during an
// upgrade each agent behaves as its own version does.
//
// Why a second signal rather than a longer wait (a dead state that must
// persist for some time before it counts): a wait adds to every crash's
// removal time, and a pause or a starved process can outlast any wait
// that keeps crashes under 5 s; the check tells the two apart in a round
// trip, and a crash still costs nothing more than the reset.
//
// # Restarts
//
// A graceful shutdown of an agent is nearly always a restart or an
// upgrade, after which it is back within seconds under the same name with
// its datapath untouched (pinned maps): the others must remove nothing.
// AnnounceRestart sets the restart flag (meta version 2) and waits for
// memberlist to retransmit that meta in full (UpdateNode), then calls
// memberlist's leave. The order matters: memberlist queues one message per
// member, so the leave would replace a meta still being retransmitted, and
// a member that missed the meta would read a plain death (and, since the
// process is gone by the time it checks, confirm it). The leave, rather
// than a silent stop, spares the others the probes and suspicions of a
// member that is gone, and lets it rejoin at once even on a new address
// (memberlist refuses a live member's new address until it is dead).
//
// The others report the member Restarting from the announcement until it
// rejoins (Alive: its new meta has no flag). Meanwhile they check it: a
// reset (the agent is not listening yet) or a handshake (it is, and about
// to rejoin) means the node is up; no answer twice in a row means the node
// itself went down (a reboot or a power-off announced as a restart): Dead.
// A member that does not come back within Timing.RestartGrace (2 minutes)
// is Dead as well. A member that leaves for good calls Leave: Left, at
// once.
//
// # Goroutines
//
//   - run, one per Gossip: calls Notify and, every second, ends stale
//     suspicions and restarts past their grace, and forgets members past
//     DeadRetention. memberlist's callbacks never call Notify: they update
//     the member table under a mutex and queue the member's name once (a
//     set in arrival order), so a slow Notify sees each member's latest
//     state, never an unbounded backlog, and never two calls at once.
//   - checker, one per Gossip: woken when memberlist declares a death, and
//     every ProbeInterval, it starts the checks that are due, each in a
//     goroutine of its own (at most 64 at once) that ends within
//     CheckTimeout, or within 50 ms of Close. The result of a check is
//     dropped if its member changed state meanwhile (a generation count).
//   - Join's round goroutines, three at a time, each a memberlist push/pull
//     with one seed; Close waits for them (memberlist's TCP timeout, 10 s,
//     bounds them).
//   - memberlist's own: UDP and TCP listeners, packet handler, probe, gossip
//     and push/pull tickers, a goroutine per incoming stream. Close calls
//     memberlist's Shutdown, which waits for the listeners; the others end
//     shortly after (a probe under way finishes its interval) and memberlist
//     offers no way to wait for them, so tests poll goleak.
//
// Close stops run, the checker and the checks, and waits for them and for
// Join's rounds.
//
// # Security
//
// Every packet and stream is encrypted and authenticated with the cluster
// key (AES-GCM, memberlist's keyring, GossipVerifyIncoming and
// GossipVerifyOutgoing on): a member without a key in common can neither
// join nor inject a suspicion or a death. The first key encrypts; all are
// tried on receipt, so keys rotate without downtime in three steps (SetKeys).
// With Meta.Cluster set, packets also carry the label "meshplane/<cluster>"
// (GCM additional data), so clusters that share a key do not merge. The
// direct check adds no way in: it only confirms or withholds a death that
// memberlist, authenticated, declared.
//
// Meta (meta.go) travels in every alive message: a compact, versioned
// binary encoding, at most memberlist's 512 bytes, validated when set. It
// is outside input when received: decodeMeta rejects anything malformed
// (FuzzDecodeMeta), and a member whose meta does not decode is tracked with
// an empty Meta and counted in Stats.MetaErrors.
//
// # Tuning
//
// Targets: every member stops using a crashed member within 5 s (p99),
// also in a cluster of 50 and with both CPUs busy; a live member is never
// removed, however busy its host or however long it is paused; a restart
// removes nothing. The settings (memberlist's LAN defaults in brackets;
// every one is a field of Timing and a mesh-agent flag):
//
//	ProbeInterval     300 ms  (1 s)      --gossip-probe-interval
//	ProbeTimeout      150 ms  (500 ms)   --gossip-probe-timeout
//	GossipInterval    100 ms  (200 ms)   --gossip-interval
//	SuspicionMult     4       (4)        --gossip-suspicion-mult
//	SuspicionMaxTimeoutMult 6 (6)        --gossip-suspicion-max-mult
//	AwarenessMaxMultiplier  4 (8)        --gossip-awareness-max-mult
//	CheckTimeout      1 s     (none)     --gossip-check-timeout
//	RestartGrace      2 min   (none)     --gossip-restart-grace
//	fixed: IndirectChecks 3 (3), GossipNodes 3 (3), RetransmitMult 6 (4),
//	PushPullInterval 15 s (30 s), EnableCompression false (true),
//	DeadNodeReclaimTime 1 ms (0: never)
//
// memberlist declares a suspect dead when its suspicion timer fires:
//
//	min = SuspicionMult × max(1, log10(n)) × ProbeInterval
//	    = 4 × 1.70 × 0.3 s = 2.04 s at n = 50
//	max = SuspicionMaxTimeoutMult × min = 12.2 s
//
// The timer starts at max and falls to min as SuspicionMult-2 = 2 other
// members confirm the suspicion with failed probes of their own (Lifeguard's
// dynamic suspicion; with one confirmation it is 5.8 s). Every member runs
// its own timer from when it heard the suspicion; the first to fire
// gossips the death. So the time until every member stops using a crashed
// member is
//
//	first probe of the dead member  ~0.3 s   the 49 others each probe one member per
//	                                         interval, in shuffled order, so someone
//	                                         probes it about once per interval; later
//	                                         than 0.9 s 5% of the time, 1.5 s 0.7%
//	+ that probe failing             0.3 s   direct ping (150 ms), then indirect pings
//	                                         through 3 members and a TCP ping until
//	                                         the end of the interval
//	+ suspicion timeout              2.04 s  the two confirmations come about one
//	                                         interval apart, well within it
//	+ the death gossiped to all     ~0.3 s   to 3 members every 100 ms, each
//	                                         retransmitting 12 times
//	+ each member's check            <1 ms   a reset from the crashed node's kernel
//	+ Notify, mirror, map write      ~1 ms
//	≈ 2.9 s, about 4.2 s in the 0.7% tail
//
// A node that vanished (power, network) answers nothing: its check waits
// CheckTimeout, 1 s more (about 3.9 s, 5.2 s in the 0.7% tail). The
// timeout is far longer than a round trip on a LAN and as long as Linux
// waits before it sends a lost SYN again: one lost SYN confirms the
// death, on a path where memberlist's pings, indirect pings and TCP ping
// all failed already.
//
// Measured with `meshctl bench gossip --members 50` (2 cores; 20 s with 4
// busy-looping processes first, so both cores are busy): all members saw
// the crash in 2.4-3.2 s over 30 runs, with or without the load, with zero
// false suspicions and zero false positives under the load (but see below).
// With 5 members crashed at once (10%), 2.7-4.0 s over 4 runs.
//
// Small clusters. With fewer than SuspicionMult (4) members, memberlist
// expects no confirmations and every suspicion lasts its minimum from the
// start, 4 × 1 × 0.3 s = 1.2 s: Lifeguard's longer timeout for a lone
// accuser never applies. With three, a failed probe has one member to ask
// for an indirect probe; with two, none, and no member sends nacks, so
// Lifeguard blames every failed probe on the prober itself: its health
// score rises by one per failure, and each point adds a ProbeInterval to
// the deadline of its probes, so to the time a failing probe takes (a
// probe that succeeds returns at once, and the next one starts at the
// next 300 ms tick). So in a cluster of two or three, memberlist alone
// declares a member that is paused or starved for 1.5-1.8 s dead (the
// observed 2.5 s pause marked dead at 1.5 s); the check is what keeps its
// routes. And in a cluster of two, the probes that fail while a peer
// crashes (two or three before it is dead) slow the detection of the next
// crash until successful probes bring the score down again.
// AwarenessMaxMultiplier 4 bounds the score at 3, so the worst crash there
// is
//
//	next probe tick   ≤ 0.3 s
//	+ probe failing     1.2 s   the deadline, 0.3 s × (score+1)
//	+ suspicion         1.2 s   not stretched
//	+ check, write    ~0.01 s   the one other member decides alone
//	≈ 2.7 s  (with memberlist's 8: 0.3 + 2.4 + 1.2 = 3.9 s)
//
// and a typical one 1.5-2.1 s (score 0 to 1). With three or more members
// a failed probe has a helper whose nack clears the prober, and the score
// stays near 0. Measured with `meshctl bench health` (short runs: 2 cores
// busy with 4 processes, agents as processes in the lab): crash to
// removal on every node 1.6-2.9 s with 2 nodes, 1.6-1.8 s with 3; no false
// removal; a 2.5 s pause read as suspect, then unresponsive, then alive.
//
// False positives: to be declared dead by memberlist, a live member must
// fail whole probes (no ack to the direct ping in 150 ms, nor through any
// of 3 indirect pings or a TCP ping within 300 ms) from three members and
// then not refute within 2.04 s, from two members and not refute within
// 5.8 s, or from one and not refute within 12.2 s (in small clusters, see
// above: 1.2 s). A busy CPU delays a goroutine by milliseconds to tens of
// milliseconds (the scheduler's time slices), not seconds; refuting takes
// two gossip spreads (the suspicion to the member, its alive message
// back), well under a second. A member that is itself slow misses the
// nacks its indirect helpers send, which raises its Lifeguard health score
// (Stats.HealthScore) and stretches its probes' deadlines (up to 4×), so
// it accuses less, and what it alone accuses gets the 12.2 s. And whatever
// memberlist concludes, a member whose node completes the check's
// handshake is Unresponsive, not Dead: none of its routes go.
//
// Alternatives measured: ProbeInterval 400 ms, ProbeTimeout 200 ms,
// SuspicionMult 3 (min 2.04 s too, but one confirmation brings a suspicion
// to it) detected in 2.7-3.9 s over 15 runs, against 2.5-2.9 s. Two
// confirmations (memberlist's default SuspicionMult 4) also make a
// coincidence of independent false suspicions less likely to kill. A longer
// interval or a larger multiplier pushes the tail past 5 s (ProbeInterval
// 500 ms with SuspicionMult 4: min 3.4 s); a shorter one leaves a suspect
// less time to refute.
//
// Beyond the target: with 12 busy processes on the 2 cores (6 runnable
// threads per core), 5 runs of 30 s were clean too (no suspicion; the
// bench's process stalled 40 ms at most, load_max_stall_ms). But in two
// stretches of runs on this shared machine, while other sessions' work ran
// on it too, runs collapsed, under either load and with either setting
// above: every member suspected one other at once and 1-33 were declared
// dead before the cluster settled again (in up to 20 s). The likely cause
// is a stall of the bench's single process, which hosts all 50 members:
// every probe under way fails at once, and the burst of suspicions,
// confirmations and refutations then competes for what CPU the process
// gets. The bench reports load_max_stall_ms to tell, and now
// false_unresponsive: such deaths meet an open port and stay Unresponsive.
// On real nodes each agent has its node's CPU to itself, and a slow node
// mostly accuses others, alone, which Lifeguard answers with the 12.2 s.
// Compression off takes a third off the CPU a member uses (memberlist
// compresses every ping and ack).
//
// RetransmitMult 6 instead of 4: with 4, each member retransmits a message 8
// times at n = 50, and a given member misses it with probability about
// e^-8; at a start of 50 members, about one in six runs left a member
// unaware of another (and it would learn of that one's death only from its
// own probes) until a push/pull healed it; 6 makes it about e^-12.
// PushPullInterval 15 s halves that healing time (memberlist scales it up
// with the cluster: ×2 at 50 members, ×9 at 5,000).
//
// RestartGrace 2 minutes: an agent's restart (image pulled, maps reopened,
// etcd session resumed, gossip rejoined) takes seconds; an upgrade that
// pulls an image over a slow link, tens of seconds. Longer keeps the
// routes of a node that was shut down for good without --leave-on-shutdown
// (and whose network stays up) that much longer; a reboot announced as a
// restart is caught sooner, when its node stops answering TCP.
//
// Larger clusters: min grows with log10(n): 2.8 s at 200 members, 3.2 s at
// 500, 4.4 s at 5,000 (detection about 3.6, 4 and 5.3 s). The probe rate per
// member (3.3 per second, a ping and an ack of about 100 bytes) does not
// grow with n; a death costs each member one TCP handshake.
package health
