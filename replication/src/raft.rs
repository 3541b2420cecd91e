//! One replication group (one partition, or the controller) as a pure state machine.
//!
//! Inputs are method calls that carry `now` (milliseconds of a monotonic clock the driver
//! owns); outputs are collected in a [`Ready`] the driver drains with [`Raft::take_ready`].
//! The driver must, for each `Ready`, in this order:
//! 1. persist `hard_state` durably (term and vote must survive before any reply is sent);
//! 2. apply the `storage` ops in order (append, truncate), fdatasync, then report the
//!    durable end with [`Raft::on_persisted`]; serve `Read` ops with [`Raft::on_read`];
//! 3. send the `messages`.
//!
//! The core never acknowledges what storage has not reported durable: a follower's
//! `AppendResponse` is produced by `on_persisted`, and the leader counts its own log only
//! up to its durable end.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use corelog_storage::batch::{self, BatchHeader};

use crate::epochs::EpochCache;
use crate::message::{Append, Message, Outgoing};
use crate::{NodeId, Offset, Term};

/// Timing and limits of a group. Every queue and buffer has a bound here.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub id: NodeId,
    /// Every voter of the group, this node included.
    pub voters: Vec<NodeId>,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Resend from the last acknowledged offset when a follower made no progress for this
    /// long (lost messages).
    pub retransmit_ms: u64,
    /// Record bytes in one Append.
    pub max_append_bytes: usize,
    /// Unacknowledged record bytes in flight to one follower.
    pub max_inflight_bytes: usize,
    /// Recent batches kept in memory to send without a storage read.
    pub max_cache_bytes: usize,
    /// Appended but uncommitted bytes the leader accepts before refusing proposals.
    pub max_uncommitted_bytes: usize,
    /// Seed of the election-timeout jitter (mixed with the node id).
    pub seed: u64,
    #[cfg(feature = "inject-bugs")]
    pub bugs: crate::Bugs,
}

impl RaftConfig {
    pub fn new(id: NodeId, voters: Vec<NodeId>, seed: u64) -> Self {
        Self {
            id,
            voters,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            heartbeat_interval_ms: 50,
            retransmit_ms: 200,
            max_append_bytes: 256 * 1024,
            max_inflight_bytes: 1 << 20,
            max_cache_bytes: 4 << 20,
            max_uncommitted_bytes: 8 << 20,
            seed,
            #[cfg(feature = "inject-bugs")]
            bugs: crate::Bugs::default(),
        }
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// Term and vote: what must be durable before a node answers anyone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

/// What storage holds when a group starts.
#[derive(Debug, Clone, Default)]
pub struct LogState {
    pub start: Offset,
    /// Every batch present is durable (recovery syncs).
    pub end: Offset,
    /// The term history: the epoch checkpoint (runs past `end` are dropped).
    pub epochs: EpochCache,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageOp {
    /// Append these batches (offsets and epochs set) at the current end: a leader's,
    /// received, so storage checks each in full (CRC32C included).
    Append(Vec<Bytes>),
    /// Append this node's own proposals at the current end. Whoever proposed them checked
    /// or built each batch (see [`Raft::propose`]), so storage checks their framing but does
    /// not compute their CRC32C again.
    AppendOwn(Vec<Bytes>),
    /// Drop every batch from this offset on.
    Truncate(Offset),
    /// Read batches from `from` (up to `max_bytes`) for `peer`; answer with `on_read`.
    Read {
        peer: NodeId,
        from: Offset,
        max_bytes: usize,
    },
    /// Move the log start up to this offset (never past what is durable): the leader
    /// holds nothing below it.
    AdvanceStart(Offset),
    /// Drop every batch and start the log again, empty, at this offset: the leader's log
    /// starts past the end of ours, or ours cannot continue it where it starts.
    Restart(Offset),
}

/// Everything the driver must do after a step. See the module docs for the order.
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    /// The term history changed: persist it (the epoch checkpoint, like Kafka's
    /// `leader-epoch-checkpoint`) just before the first `Append` of this Ready, after any
    /// `Truncate` before it, or after the ops if there is no `Append`. So the checkpoint on
    /// disk always names the term of every batch on disk; start-up truncates it to the log.
    pub epochs: Option<EpochCache>,
    pub storage: Vec<StorageOp>,
    pub messages: Vec<Outgoing>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Why a proposal was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    NotLeader {
        leader: Option<NodeId>,
    },
    /// Too much appended but uncommitted: back-pressure.
    Busy,
    Invalid(String),
}

#[derive(Debug, Clone)]
struct Progress {
    /// Next offset to send (optimistic, may run ahead of `matched`).
    next: Offset,
    /// End of the prefix the follower has durably and matching ours.
    matched: Offset,
    /// (end offset, bytes) of Appends not yet acknowledged.
    inflight: VecDeque<(Offset, usize)>,
    inflight_bytes: usize,
    /// Leader clock at the send of the newest acknowledged Append.
    acked_sent_ms: Option<u64>,
    last_progress_ms: u64,
    reading: bool,
}

/// A pending follower acknowledgement, sent once storage reports the data durable.
#[derive(Debug, Clone, Copy)]
struct PendingAck {
    leader: NodeId,
    term: Term,
    end: Offset,
    prev_end: Offset,
    echo_ms: u64,
}

pub struct Raft {
    cfg: RaftConfig,
    hard: HardState,
    hard_dirty: bool,
    epochs_dirty: bool,
    /// Storage found corrupt data: never campaign again (see `on_storage_corrupt`).
    damaged: bool,
    role: Role,
    leader: Option<NodeId>,
    start: Offset,
    end: Offset,
    durable_end: Offset,
    commit: Offset,
    epochs: EpochCache,
    /// Recent batches: (base, end, bytes), contiguous, ending at `end`.
    cache: VecDeque<(Offset, Offset, Bytes)>,
    cache_bytes: usize,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeSet<NodeId>,
    election_deadline_ms: u64,
    heartbeat_deadline_ms: u64,
    /// When this node last heard from a legitimate leader (itself, if leader).
    leader_contact_ms: Option<u64>,
    pending_ack: Option<PendingAck>,
    /// The highest log start a leader has told us of: we follow it as far as what we
    /// hold committed and durable allows, now or once more of it is.
    leader_start: Offset,
    /// A leadership transfer in progress (leader only): to whom, and until when.
    transfer: Option<Transfer>,
    rng: u64,
    ready: Ready,
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    to: NodeId,
    deadline_ms: u64,
}

impl Raft {
    pub fn new(cfg: RaftConfig, hard: HardState, log: LogState, now: u64) -> Self {
        assert!(
            cfg.voters.contains(&cfg.id),
            "a node replicates only groups it votes in"
        );
        assert!(cfg.election_timeout_min_ms < cfg.election_timeout_max_ms);
        assert!(cfg.heartbeat_interval_ms < cfg.election_timeout_min_ms);
        let rng = cfg.seed ^ (u64::from(cfg.id).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        let mut raft = Self {
            hard,
            hard_dirty: false,
            epochs_dirty: false,
            damaged: false,
            role: Role::Follower,
            leader: None,
            start: log.start,
            end: log.end,
            durable_end: log.end,
            commit: log.start,
            // A checkpoint may name runs past the log end (saved before a crash cut the
            // tail); they are not the log's.
            epochs: {
                let mut e = log.epochs;
                e.truncate(log.end);
                e
            },
            cache: VecDeque::new(),
            cache_bytes: 0,
            progress: BTreeMap::new(),
            votes: BTreeSet::new(),
            election_deadline_ms: 0,
            heartbeat_deadline_ms: 0,
            leader_contact_ms: None,
            pending_ack: None,
            leader_start: 0,
            transfer: None,
            rng,
            ready: Ready::default(),
            cfg,
        };
        raft.reset_election_timer(now);
        if raft.sole_voter() {
            // Nobody else can lead or vote: campaign at the first tick instead of waiting
            // out an election timeout (a broker's partitions of one are writable at once).
            raft.election_deadline_ms = now;
        }
        raft
    }

    /// Moves this node's next election to `now`: the preferred replica of a brand-new
    /// group campaigns first, so first leaders land where placement put them rather than
    /// wherever a random timeout fires first. Changes timing only, never safety (a
    /// pre-vote still needs a majority).
    pub fn campaign_now(&mut self, now: u64) {
        if self.role == Role::Follower && !self.damaged {
            self.election_deadline_ms = now;
        }
    }

    /// Hands leadership to `to`, or to the voter that holds most of the log: proposals
    /// stop; once the target holds the whole log durably, this leader steps down (giving
    /// up its lease) and tells the target to campaign at once (TimeoutNow), whose votes
    /// are granted inside the lease. If the target has not caught up within an election
    /// timeout, the transfer is dropped and this node leads on. False when there is
    /// nobody to hand over to (not leader, a group of one, `to` not a voter).
    pub fn transfer_leadership(&mut self, now: u64, to: Option<NodeId>) -> bool {
        if self.role != Role::Leader || self.sole_voter() {
            return false;
        }
        let target = match to {
            Some(t) if self.progress.contains_key(&t) => t,
            Some(_) => return false,
            None => match self
                .progress
                .iter()
                .max_by_key(|(_, p)| (p.matched, p.last_progress_ms))
            {
                Some((&t, _)) => t,
                None => return false,
            },
        };
        self.transfer = Some(Transfer {
            to: target,
            deadline_ms: now + self.cfg.election_timeout_max_ms,
        });
        // Handing over only on an answer from the target shows it is alive: handing to a
        // dead one would leave the group leaderless for an election timeout.
        self.send_append(target, now, true);
        true
    }

    /// The replica a transfer in progress hands leadership to.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.to)
    }

    fn maybe_hand_over(&mut self, now: u64) {
        let Some(t) = self.transfer else {
            return;
        };
        // `become_follower` drops a transfer, so one in progress means we lead.
        debug_assert_eq!(self.role, Role::Leader);
        let caught_up = self
            .progress
            .get(&t.to)
            .is_some_and(|p| p.matched >= self.end);
        if !caught_up && !self.bugs().transfer_unchecked {
            return;
        }
        let term = self.hard.term;
        // Stepping down first ends the lease: nothing is served from here once the target
        // may win votes that the lease would have refused it.
        self.become_follower(now, term, None);
        self.send(t.to, Message::TimeoutNow { term });
    }

    /// A group of one: its own durable log is the majority.
    fn sole_voter(&self) -> bool {
        self.cfg.voters.len() == 1
    }

    // ----- observers -------------------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Term {
        self.hard.term
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn hard_state(&self) -> HardState {
        self.hard
    }
    /// The commit index: every offset below it is on a majority, durably. Kafka's high
    /// watermark as far as this node knows.
    pub fn commit(&self) -> Offset {
        self.commit
    }
    pub fn end(&self) -> Offset {
        self.end
    }
    /// The log start: nothing below it is held.
    pub fn start(&self) -> Offset {
        self.start
    }
    /// How far this replica's own policies (retention, DeleteRecords, compaction) may
    /// move its log start: only over what is committed and durable here, so that nothing
    /// a new leader could still need from a majority is deleted.
    pub fn start_bound(&self) -> Offset {
        if self.bugs().start_past_commit {
            return self.end;
        }
        self.commit.min(self.durable_end)
    }
    /// Storage moved the log start to `start` (within `start_bound`).
    pub fn on_start_moved(&mut self, start: Offset) {
        debug_assert!(start <= self.start_bound().max(self.start));
        self.start = self.start.max(start.min(self.end));
    }
    pub fn durable_end(&self) -> Offset {
        self.durable_end
    }
    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// The high watermark a leader may serve to readers at `now`, or `None` when it must
    /// not: not leader, lease expired (a newer leader may exist), or no entry of its own
    /// term committed yet (its commit index may be behind the previous leader's).
    pub fn read_high_watermark(&self, now: u64) -> Option<Offset> {
        if self.role != Role::Leader || !self.lease_valid(now) {
            return None;
        }
        if self.sole_voter() {
            return Some(self.commit);
        }
        (self.commit > 0 && self.epochs.term_at(self.commit - 1) == self.hard.term)
            .then_some(self.commit)
    }

    /// The voters a leader knows to be in sync at `now` (itself included): heard from
    /// within `max_lag_ms` and holding everything committed, or making progress within
    /// that time (Kafka's ISR, `replica.lag.time.max.ms`). Empty unless leader.
    pub fn in_sync(&self, now: u64, max_lag_ms: u64) -> Vec<NodeId> {
        if self.role != Role::Leader {
            return Vec::new();
        }
        let mut out: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| {
                p.acked_sent_ms
                    .is_some_and(|t| now.saturating_sub(t) <= max_lag_ms)
                    && (p.matched >= self.commit
                        || now.saturating_sub(p.last_progress_ms) <= max_lag_ms)
            })
            .map(|(id, _)| *id)
            .collect();
        out.push(self.cfg.id);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Every voter of the group.
    pub fn voters(&self) -> &[NodeId] {
        &self.cfg.voters
    }

    /// The next time `on_tick` must be called.
    pub fn next_deadline(&self) -> u64 {
        match self.role {
            Role::Leader => self.heartbeat_deadline_ms,
            _ => self.election_deadline_ms,
        }
    }

    pub fn take_ready(&mut self) -> Ready {
        if self.hard_dirty {
            self.ready.hard_state = Some(self.hard);
            self.hard_dirty = false;
        }
        if self.epochs_dirty {
            self.ready.epochs = Some(self.epochs.clone());
            self.epochs_dirty = false;
        }
        std::mem::take(&mut self.ready)
    }

    // ----- inputs ----------------------------------------------------------------------

    pub fn on_tick(&mut self, now: u64) {
        match self.role {
            Role::Leader => {
                if self.transfer.is_some_and(|t| now >= t.deadline_ms) {
                    // The target never caught up (or is gone): lead on.
                    self.transfer = None;
                }
                if self.quorum_silent_for(now) > self.cfg.election_timeout_max_ms {
                    // Check quorum: a leader cut off from a majority steps down rather
                    // than keep claiming a term others have moved past.
                    self.become_follower(now, self.hard.term, None);
                    return;
                }
                if now >= self.heartbeat_deadline_ms {
                    // On multiples of the interval, so every group a node leads beats on
                    // the same tick and `Node` sends one envelope per peer for all of them.
                    let interval = self.cfg.heartbeat_interval_ms;
                    self.heartbeat_deadline_ms = (now / interval + 1) * interval;
                    let peers: Vec<NodeId> = self.progress.keys().copied().collect();
                    for peer in peers {
                        self.maybe_retransmit(peer, now);
                        self.send_append(peer, now, true);
                    }
                }
            }
            _ => {
                if now >= self.election_deadline_ms {
                    if self.damaged {
                        // Cannot serve what it holds: leave leadership to a sound replica.
                        self.reset_election_timer(now);
                    } else {
                        self.start_pre_vote(now);
                    }
                }
            }
        }
    }

    /// Proposes a batch (leader only): stamps its base offset and leader epoch, appends it
    /// and replicates it. Returns (base offset, end offset). The caller has verified the
    /// batch's CRC32C (a produced batch) or computed it (a batch it built): this node's
    /// storage does not compute it again (followers do).
    pub fn propose(&mut self, now: u64, batch: Vec<u8>) -> Result<(Offset, Offset), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            // Handing over: what it appended now the target might not hold.
            return Err(ProposeError::NotLeader { leader: None });
        }
        if self.uncommitted_bytes() > self.cfg.max_uncommitted_bytes {
            return Err(ProposeError::Busy);
        }
        let mut batch = batch;
        let header =
            BatchHeader::parse(&batch).map_err(|e| ProposeError::Invalid(e.to_string()))?;
        if header.size != batch.len() {
            return Err(ProposeError::Invalid("batch length mismatch".into()));
        }
        let base = self.end;
        batch::set_base_offset(&mut batch, base as i64);
        batch::set_partition_leader_epoch(&mut batch, self.hard.term as i32);
        let end = base + header.last_offset_delta as u64 + 1;
        self.append_local(Bytes::from(batch), base, end);
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, now, false);
        }
        Ok((base, end))
    }

    pub fn on_message(&mut self, now: u64, from: NodeId, msg: Message) {
        if !self.cfg.voters.contains(&from) || from == self.cfg.id {
            return;
        }
        let term = msg.term();
        match &msg {
            Message::PreVote { .. } => {}
            Message::PreVoteResponse { granted: true, .. } => {}
            Message::Vote {
                transfer: false, ..
            } if term > self.hard.term && self.in_leader_lease(now) => {
                // Leader stickiness: we heard from a live leader within the minimum
                // election timeout, so this candidate cannot win honestly; ignoring it
                // keeps the leader's lease sound.
                return;
            }
            _ if term > self.hard.term => {
                let leader = matches!(msg, Message::Append(_)).then_some(from);
                self.become_follower(now, term, leader);
            }
            _ => {}
        }
        match msg {
            Message::PreVote {
                term,
                last_term,
                end,
            } => {
                let granted = term > self.hard.term
                    && (self.log_ok(last_term, end) || self.bugs().vote_ignores_log)
                    && !self.in_leader_lease(now);
                let term = if granted { term } else { self.hard.term };
                self.send(from, Message::PreVoteResponse { term, granted });
            }
            Message::PreVoteResponse { term, granted } => {
                if self.role == Role::PreCandidate && granted && term == self.hard.term + 1 {
                    self.votes.insert(from);
                    if self.votes.len() >= self.cfg.majority() {
                        self.start_election(now, false);
                    }
                }
            }
            Message::Vote {
                term,
                last_term,
                end,
                ..
            } => {
                let free = self.hard.voted_for.is_none_or(|v| v == from) || self.bugs().double_vote;
                let granted = term == self.hard.term
                    && free
                    && (self.log_ok(last_term, end) || self.bugs().vote_ignores_log);
                if granted {
                    self.hard.voted_for = Some(from);
                    self.hard_dirty = true;
                    self.reset_election_timer(now);
                }
                self.send(
                    from,
                    Message::VoteResponse {
                        term: self.hard.term,
                        granted,
                    },
                );
            }
            Message::VoteResponse { term, granted } => {
                if self.role == Role::Candidate && granted && term == self.hard.term {
                    self.votes.insert(from);
                    if self.votes.len() >= self.cfg.majority() {
                        self.become_leader(now);
                    }
                }
            }
            Message::TimeoutNow { term } => {
                // Only from the leader we follow in its term: a stale or forged one from
                // anyone else starts nothing.
                if term == self.hard.term
                    && self.role == Role::Follower
                    && self.leader == Some(from)
                    && !self.damaged
                {
                    if self.bugs().transfer_unchecked {
                        self.hard = HardState {
                            term: self.hard.term + 1,
                            voted_for: Some(self.cfg.id),
                        };
                        self.hard_dirty = true;
                        self.become_leader(now);
                    } else {
                        self.start_election(now, true);
                    }
                }
            }
            Message::Append(append) => self.handle_append(now, from, append),
            Message::AppendResponse {
                term,
                end,
                success,
                prev_end,
                echo_ms,
            } => {
                if self.role == Role::Leader && term == self.hard.term {
                    self.handle_append_response(now, from, end, success, prev_end, echo_ms);
                }
            }
        }
    }

    /// Storage reports every batch below `durable_end` durable.
    pub fn on_persisted(&mut self, _now: u64, durable_end: Offset) {
        self.durable_end = durable_end.min(self.end);
        if let Some(ack) = self.pending_ack {
            let whole = self.durable_end >= ack.end || self.bugs().ack_before_fsync;
            if whole {
                self.pending_ack = None;
            }
            // With syncs pipelined, the next Append is written while the previous one's
            // sync runs, and that sync ends short of the newest Append's end: what is
            // durable is acknowledged now, not a whole sync later. The log matches this
            // leader's up to `ack.end`, so its durable prefix is the leader's too.
            let end = if whole { ack.end } else { self.durable_end };
            if ack.term == self.hard.term && (whole || end > 0) {
                self.send(
                    ack.leader,
                    Message::AppendResponse {
                        term: ack.term,
                        end,
                        success: true,
                        prev_end: ack.prev_end,
                        echo_ms: ack.echo_ms,
                    },
                );
            }
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
        self.follow_leader_start();
    }

    /// Storage found stored data that fails its checks (a batch that is not what was
    /// written). The entries are still this replica's (they were written and synced), so
    /// its votes stay sound; but a leader that cannot read an entry cannot replicate it.
    /// It steps down and stops campaigning for the life of this process, so a replica
    /// with a sound copy leads. A sole voter has no sound copy to hand over to: stepping
    /// down would only take the group out, so it keeps leading, and reads of the damaged
    /// range fail on their own (storage never serves what fails its checks).
    pub fn on_storage_corrupt(&mut self, now: u64) {
        if self.sole_voter() {
            return;
        }
        self.damaged = true;
        if self.role != Role::Follower {
            self.become_follower(now, self.hard.term, None);
        }
    }

    /// Answer to a `StorageOp::Read`: whole batches starting at `from`; empty if the read
    /// failed (it is retried later).
    pub fn on_read(&mut self, now: u64, peer: NodeId, from: Offset, bytes: Bytes) {
        let Some(p) = self.progress.get_mut(&peer) else {
            return;
        };
        p.reading = false;
        if self.role != Role::Leader || p.next != from {
            return; // stale: the follower moved on
        }
        // The first batch is the one holding `from` (it may start before it).
        let mut entries = Vec::new();
        let mut rest = bytes;
        let mut start = None;
        let mut next = from;
        while let Ok(h) = BatchHeader::parse(&rest) {
            let (base, end) = (h.base_offset as u64, h.last_offset() as u64 + 1);
            let fits = match start {
                None => base <= from && from < end,
                Some(_) => base == next,
            };
            // The epoch field lies outside the batch CRC: never forward one that disagrees
            // with our own term history. If the batch holding `from` does, our copy is
            // rotten (the checkpoint, not the batch, is the term history).
            let epoch_ok = h.partition_leader_epoch as Term == self.epochs.term_at(base);
            if fits && !epoch_ok && start.is_none() {
                return self.on_storage_corrupt(now);
            }
            if h.size > rest.len() || !fits || !epoch_ok {
                break;
            }
            start.get_or_insert(base);
            next = end;
            entries.push(rest.split_to(h.size));
        }
        if let Some(start) = start {
            self.send_entries(peer, now, start, entries, next);
        }
    }

    // ----- roles -----------------------------------------------------------------------

    fn become_follower(&mut self, now: u64, term: Term, leader: Option<NodeId>) {
        if term > self.hard.term {
            self.hard = HardState {
                term,
                voted_for: None,
            };
            self.hard_dirty = true;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.transfer = None;
        self.progress.clear();
        self.votes.clear();
        self.reset_election_timer(now);
    }

    fn start_pre_vote(&mut self, now: u64) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes = BTreeSet::from([self.cfg.id]);
        self.reset_election_timer(now);
        if self.votes.len() >= self.cfg.majority() {
            return self.start_election(now, false);
        }
        let msg = Message::PreVote {
            term: self.hard.term + 1,
            last_term: self.last_term(),
            end: self.end,
        };
        self.broadcast(msg);
    }

    fn start_election(&mut self, now: u64, transfer: bool) {
        self.role = Role::Candidate;
        self.hard = HardState {
            term: self.hard.term + 1,
            voted_for: Some(self.cfg.id),
        };
        self.hard_dirty = true;
        self.votes = BTreeSet::from([self.cfg.id]);
        self.reset_election_timer(now);
        if self.votes.len() >= self.cfg.majority() {
            return self.become_leader(now);
        }
        let msg = Message::Vote {
            term: self.hard.term,
            last_term: self.last_term(),
            end: self.end,
            transfer,
        };
        self.broadcast(msg);
    }

    fn become_leader(&mut self, now: u64) {
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.votes.clear();
        // What a follower appended never entered the cache; start it afresh so it stays
        // one contiguous run ending at `end`.
        self.cache.clear();
        self.cache_bytes = 0;
        self.leader_contact_ms = Some(now);
        self.progress = self
            .cfg
            .voters
            .iter()
            .filter(|&&v| v != self.cfg.id)
            .map(|&v| {
                let p = Progress {
                    next: self.end,
                    matched: self.start,
                    inflight: VecDeque::new(),
                    inflight_bytes: 0,
                    acked_sent_ms: None,
                    last_progress_ms: now,
                    reading: false,
                };
                (v, p)
            })
            .collect();
        if self.sole_voter() {
            // No other replica can hold or overwrite anything: every durable entry is
            // committed already (see `maybe_commit`), and a control batch would only shift
            // the offsets clients see at each restart.
            self.maybe_commit();
            return;
        }
        // Raft commits earlier terms' entries only through one of the current term. The
        // Kafka way to have one at once: a LEADER_CHANGE control batch, which consumers
        // skip, like KRaft's.
        let control = leader_change_batch(self.cfg.id, &self.cfg.voters, now);
        let base = self.end;
        let mut bytes = control;
        batch::set_base_offset(&mut bytes, base as i64);
        batch::set_partition_leader_epoch(&mut bytes, self.hard.term as i32);
        self.append_local(Bytes::from(bytes), base, base + 1);
        self.heartbeat_deadline_ms = now;
        self.on_tick(now);
    }

    // ----- log -------------------------------------------------------------------------

    /// The term of the last entry. The term history keeps its runs below the log start
    /// (it is only ever cut at the end), so a log emptied by retention still knows it.
    fn last_term(&self) -> Term {
        if self.end > 0 {
            self.epochs.term_at(self.end - 1)
        } else {
            0
        }
    }

    /// Is a candidate's log at least as up to date as ours?
    fn log_ok(&self, last_term: Term, end: Offset) -> bool {
        (last_term, end) >= (self.last_term(), self.end)
    }

    /// The newest entry of the leader's cache, `(base, end, bytes)`: right after a
    /// `propose`, the batch it appended, offsets and epoch set (the broker's fetch cache
    /// shares these bytes).
    pub fn newest_cached(&self) -> Option<(Offset, Offset, &Bytes)> {
        self.cache.back().map(|(b, e, x)| (*b, *e, x))
    }

    fn append_local(&mut self, bytes: Bytes, base: Offset, end: Offset) {
        debug_assert_eq!(base, self.end);
        self.epochs_dirty |= self.epochs.record(self.hard.term, base);
        self.end = end;
        self.cache_bytes += bytes.len();
        self.cache.push_back((base, end, bytes.clone()));
        while self.cache_bytes > self.cfg.max_cache_bytes && self.cache.len() > 1 {
            let (_, _, b) = self.cache.pop_front().expect("len > 1");
            self.cache_bytes -= b.len();
        }
        self.ready.storage.push(StorageOp::AppendOwn(vec![bytes]));
    }

    /// Moves our start up to the leader's as far as `start_bound` allows: at each Append,
    /// and as soon as storage made more durable (so a replica that restarted its log at
    /// the batch holding the leader's start reaches that start with its first sync, not
    /// only at the next Append, which a leader that dies at once never sends).
    fn follow_leader_start(&mut self) {
        if self.role != Role::Follower {
            return;
        }
        let start = self.leader_start.min(self.start_bound()).min(self.end);
        if start > self.start {
            self.start = start;
            self.ready.storage.push(StorageOp::AdvanceStart(start));
        }
    }

    /// Empties the log and starts it again at `offset`, whose previous entry has `term`
    /// (see `handle_append`).
    fn restart_at(&mut self, offset: Offset, term: Term) {
        self.start = offset;
        self.end = offset;
        self.durable_end = offset;
        // Everything below the leader's start is committed, and `offset` is at most that.
        self.commit = self.commit.max(offset);
        self.epochs = EpochCache::new();
        if offset > 0 && term > 0 {
            self.epochs.record(term, offset - 1);
        }
        self.epochs_dirty = true;
        self.cache.clear();
        self.cache_bytes = 0;
        // An acknowledgement owed for the old log would claim what is gone.
        self.pending_ack = None;
        self.ready.storage.push(StorageOp::Restart(offset));
    }

    fn truncate_local(&mut self, offset: Offset) {
        assert!(
            offset >= self.commit,
            "never truncate committed entries ({offset} < {})",
            self.commit
        );
        self.end = offset;
        self.durable_end = self.durable_end.min(offset);
        self.epochs_dirty |= self.epochs.truncate(offset);
        while self.cache.back().is_some_and(|&(_, e, _)| e > offset) {
            let (_, _, b) = self.cache.pop_back().expect("non-empty");
            self.cache_bytes -= b.len();
        }
        self.ready.storage.push(StorageOp::Truncate(offset));
    }

    /// Bytes of uncommitted batches still cached: the newest entries, so the walk is
    /// bounded by the limit it enforces.
    fn uncommitted_bytes(&self) -> usize {
        self.cache
            .iter()
            .rev()
            .take_while(|(_, e, _)| *e > self.commit)
            .map(|(_, _, b)| b.len())
            .sum()
    }

    // ----- follower side ---------------------------------------------------------------

    fn handle_append(&mut self, now: u64, from: NodeId, append: Append) {
        let Append {
            term,
            prev_end,
            prev_term,
            commit,
            entries,
            sent_ms,
            log_start,
        } = append;
        if term < self.hard.term {
            self.send(
                from,
                Message::AppendResponse {
                    term: self.hard.term,
                    end: self.end,
                    success: false,
                    prev_end,
                    echo_ms: sent_ms,
                },
            );
            return;
        }
        // term == ours (a higher one made us follower above).
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(now, term, Some(from));
        }
        self.leader_contact_ms = Some(now);
        self.reset_election_timer(now);

        let reject = |s: &Self, hint: Offset| Message::AppendResponse {
            term: s.hard.term,
            end: hint,
            success: false,
            prev_end,
            echo_ms: sent_ms,
        };
        // The leader sends from its log start (the batch holding it) only when it has
        // nothing earlier to send: if our log cannot continue there, nothing the leader
        // holds ever will, so ours starts again at that batch. Everything below the
        // leader's start is committed (its start never passes its commit), so this loses
        // nothing a majority does not hold; what we held there was committed and is gone
        // from the leader too, or was never committed.
        let cannot_continue = prev_end > self.end
            || (prev_end > self.start && self.epochs.term_at(prev_end - 1) != prev_term);
        // Never over our own commit: a leader that needs that has a wrong term history,
        // and refusing keeps what we hold committed (it cannot commit without us then).
        if prev_end <= log_start
            && cannot_continue
            && !entries.is_empty()
            && self.commit <= prev_end
        {
            self.restart_at(prev_end, prev_term);
        }
        if prev_end == self.start
            && self.end == self.start
            && prev_end > 0
            && self.epochs.term_at(prev_end - 1) != prev_term
        {
            // Our log is empty at its start and our record of the term before it is not
            // the leader's: a crash between restarting the log and saving the term
            // history left the old one. Everything below our start is committed and the
            // leader holds the term of its entries, so its word stands.
            self.epochs = EpochCache::new();
            if prev_term > 0 {
                self.epochs.record(prev_term, prev_end - 1);
            }
            self.epochs_dirty = true;
        }
        if prev_end > self.end {
            let m = reject(self, self.end);
            return self.send(from, m);
        }
        if prev_end > self.start && self.epochs.term_at(prev_end - 1) != prev_term {
            // Retry from the start of our conflicting term: skips a whole term per round.
            let hint = self
                .epochs
                .term_start(prev_end - 1)
                .max(self.commit)
                .min(prev_end - 1);
            let m = reject(self, hint);
            return self.send(from, m);
        }
        let mut matched = prev_end;
        for bytes in entries {
            let Ok(h) = BatchHeader::parse(&bytes) else {
                break;
            };
            let (base, end, eterm) = (
                h.base_offset as u64,
                h.last_offset() as u64 + 1,
                h.partition_leader_epoch as Term,
            );
            if base != matched || end <= base {
                break; // not contiguous: ignore the rest, the leader will resend
            }
            if end <= self.start {
                // Below our start: committed, and gone here by our own retention.
                matched = end;
                continue;
            }
            if base < self.end {
                if self.epochs.term_at(base) == eterm {
                    matched = end; // already have it (log matching: identical)
                    continue;
                }
                if base < self.commit {
                    // A legitimate leader never contradicts a committed entry (leader
                    // completeness): these bytes come from a confused or hostile peer.
                    // Refuse them rather than cut what is committed.
                    break;
                }
                self.truncate_local(base);
            }
            self.epochs_dirty |= self.epochs.record(eterm, base);
            self.end = end;
            self.ready.storage.push(StorageOp::Append(vec![bytes]));
            matched = end;
        }
        let new_commit = commit.min(matched);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        // The leader deleted below its start: so do we, within what we hold committed.
        self.leader_start = self.leader_start.max(log_start);
        self.follow_leader_start();
        // The ack waits for storage: only durable data is acknowledged.
        let ack = PendingAck {
            leader: from,
            term,
            end: matched,
            prev_end,
            echo_ms: sent_ms,
        };
        self.pending_ack = Some(match self.pending_ack {
            Some(old) if old.term == term && old.end > ack.end => PendingAck {
                echo_ms: ack.echo_ms.max(old.echo_ms),
                ..old
            },
            _ => ack,
        });
        if self.durable_end >= matched || self.bugs().ack_before_fsync {
            self.on_persisted(now, self.durable_end);
        }
    }

    // ----- leader side -----------------------------------------------------------------

    fn handle_append_response(
        &mut self,
        now: u64,
        from: NodeId,
        end: Offset,
        success: bool,
        prev_end: Offset,
        echo_ms: u64,
    ) {
        // A follower can only hold what we sent: a larger claim is not believed (it would
        // commit entries nobody else has).
        let end = end.min(self.end);
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        if success {
            if end > p.matched {
                p.matched = end;
                p.last_progress_ms = now;
            }
            p.next = p.next.max(p.matched);
            p.acked_sent_ms = Some(p.acked_sent_ms.map_or(echo_ms, |t| t.max(echo_ms)));
            while p.inflight.front().is_some_and(|&(e, _)| e <= p.matched) {
                let (_, b) = p.inflight.pop_front().expect("non-empty");
                p.inflight_bytes -= b;
            }
            self.maybe_commit();
        } else {
            p.acked_sent_ms = Some(p.acked_sent_ms.map_or(echo_ms, |t| t.max(echo_ms)));
            if prev_end < p.matched || prev_end > p.next {
                return; // stale rejection
            }
            p.next = end.max(p.matched).min(self.end);
            p.inflight.clear();
            p.inflight_bytes = 0;
        }
        self.send_append(from, now, false);
        if self.transfer.is_some_and(|t| t.to == from) {
            self.maybe_hand_over(now);
        }
    }

    fn maybe_retransmit(&mut self, peer: NodeId, now: u64) {
        let retransmit = self.cfg.retransmit_ms;
        let Some(p) = self.progress.get_mut(&peer) else {
            return;
        };
        if (p.next > p.matched || p.reading) && now.saturating_sub(p.last_progress_ms) >= retransmit
        {
            // Lost messages, or a storage read that never came back: start over from
            // what the follower is known to have.
            p.next = p.matched;
            p.inflight.clear();
            p.inflight_bytes = 0;
            p.reading = false;
            p.last_progress_ms = now;
        }
    }

    /// Sends what `peer` lacks, within limits; or a heartbeat if `heartbeat` and nothing to
    /// send.
    fn send_append(&mut self, peer: NodeId, now: u64, heartbeat: bool) {
        let start = self.start;
        let Some(p) = self.progress.get_mut(&peer) else {
            return;
        };
        // What lies below our start is gone: a follower that needs it gets our log from
        // its start (the batch holding it), and starts its own again there.
        p.next = p.next.max(start);
        let (next, matched) = (p.next, p.matched);
        if next < self.end && p.inflight_bytes < self.cfg.max_inflight_bytes && !p.reading {
            // The cache holds a contiguous run ending at `end`, so it can serve `next` iff
            // its first batch starts at or before it.
            let cached = self.cache.front().is_some_and(|&(b, _, _)| b <= next);
            if cached {
                let budget = self
                    .cfg
                    .max_append_bytes
                    .min(self.cfg.max_inflight_bytes - p.inflight_bytes);
                // Start at the batch holding `next`: a follower's hint need not fall on
                // one of our batch boundaries.
                let mut entries = Vec::new();
                let mut size = 0;
                let mut start = None;
                let mut upto = next;
                for (b, e, bytes) in &self.cache {
                    if *e <= next {
                        continue;
                    }
                    if start.is_some() && (*b != upto || size + bytes.len() > budget) {
                        break;
                    }
                    start.get_or_insert(*b);
                    size += bytes.len();
                    entries.push(bytes.clone());
                    upto = *e;
                }
                let start = start.expect("a contiguous cache ending at `end` serves `next`");
                return self.send_entries(peer, now, start, entries, upto);
            } else {
                let max_bytes = self.cfg.max_append_bytes;
                if let Some(p) = self.progress.get_mut(&peer) {
                    p.reading = true;
                }
                self.ready.storage.push(StorageOp::Read {
                    peer,
                    from: next,
                    max_bytes,
                });
            }
        }
        if heartbeat {
            // Heartbeats claim only the known-matching prefix, so they never race the
            // pipelined Appends.
            // Nothing below our start is ours to claim a match for.
            let at = matched.max(self.start).min(self.end);
            let msg = self.append_after(at, self.commit.min(at), Vec::new(), now);
            self.send(peer, msg);
        }
    }

    fn send_entries(
        &mut self,
        peer: NodeId,
        now: u64,
        from: Offset,
        entries: Vec<Bytes>,
        upto: Offset,
    ) {
        let size: usize = entries.iter().map(|e| e.len()).sum();
        let msg = self.append_after(from, self.commit, entries, now);
        if let Some(p) = self.progress.get_mut(&peer) {
            p.next = upto;
            p.inflight.push_back((upto, size));
            p.inflight_bytes += size;
        }
        self.send(peer, msg);
    }

    /// An Append of `entries` continuing our log after `prev_end`.
    fn append_after(
        &self,
        prev_end: Offset,
        commit: Offset,
        entries: Vec<Bytes>,
        now: u64,
    ) -> Message {
        let prev_term = if prev_end > 0 {
            self.epochs.term_at(prev_end - 1)
        } else {
            0
        };
        Message::Append(Append {
            term: self.hard.term,
            prev_end,
            prev_term,
            commit,
            entries,
            sent_ms: now,
            log_start: self.start,
        })
    }

    fn maybe_commit(&mut self) {
        let mut ends: Vec<Offset> = self.progress.values().map(|p| p.matched).collect();
        ends.push(self.durable_end);
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_end = ends[self.cfg.majority() - 1];
        if self.sole_voter() {
            // The rule below guards against another replica overwriting an old-term entry
            // after a new election; with one voter there is none.
            self.commit = self.commit.max(quorum_end);
            return;
        }
        // Only an entry of the current term is committed by counting replicas (Raft 5.4.2);
        // earlier ones commit with it.
        let own_term = quorum_end > 0 && self.epochs.term_at(quorum_end - 1) == self.hard.term;
        if quorum_end > self.commit && (own_term || self.bugs().commit_old_term) {
            self.commit = quorum_end;
        }
    }

    /// How long since the newest send that a majority (counting ourselves) acknowledged.
    fn quorum_silent_for(&self, now: u64) -> u64 {
        now.saturating_sub(
            self.quorum_acked_sent_ms(now)
                .unwrap_or(self.leader_contact_ms.unwrap_or(now)),
        )
    }

    fn quorum_acked_sent_ms(&self, now: u64) -> Option<u64> {
        let mut sent: Vec<Option<u64>> = self.progress.values().map(|p| p.acked_sent_ms).collect();
        sent.push(Some(now));
        sent.sort_unstable_by(|a, b| b.cmp(a));
        sent[self.cfg.majority() - 1]
    }

    /// A majority acknowledged a message sent less than the minimum election timeout ago.
    /// They ignore candidates for that long after hearing from us (counted from receipt,
    /// which is later than our send), so no other leader can exist yet.
    fn lease_valid(&self, now: u64) -> bool {
        if self.cfg.voters.len() == 1 {
            return true;
        }
        self.quorum_acked_sent_ms(now)
            .is_some_and(|t| now < t + self.cfg.election_timeout_min_ms)
    }

    fn in_leader_lease(&self, now: u64) -> bool {
        self.role == Role::Leader
            || self.leader_contact_ms.is_some_and(|t| {
                self.leader.is_some() && now < t + self.cfg.election_timeout_min_ms
            })
    }

    // ----- plumbing --------------------------------------------------------------------

    fn send(&mut self, to: NodeId, msg: Message) {
        self.ready.messages.push((to, msg));
    }

    fn broadcast(&mut self, msg: Message) {
        for &v in &self.cfg.voters {
            if v != self.cfg.id {
                self.ready.messages.push((v, msg.clone()));
            }
        }
    }

    fn reset_election_timer(&mut self, now: u64) {
        // xorshift64*: deterministic jitter from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let span = self.cfg.election_timeout_max_ms - self.cfg.election_timeout_min_ms;
        self.election_deadline_ms = now + self.cfg.election_timeout_min_ms + r % span;
    }

    /// The injected bugs in force: none unless built with `inject-bugs`.
    #[cfg(feature = "inject-bugs")]
    fn bugs(&self) -> crate::Bugs {
        self.cfg.bugs
    }
    #[cfg(not(feature = "inject-bugs"))]
    fn bugs(&self) -> NoBugs {
        NoBugs::default()
    }
}

/// Without the `inject-bugs` feature every bug is off, and the checks fold away.
#[cfg(not(feature = "inject-bugs"))]
#[derive(Default)]
struct NoBugs {
    commit_old_term: bool,
    start_past_commit: bool,
    ack_before_fsync: bool,
    vote_ignores_log: bool,
    double_vote: bool,
    transfer_unchecked: bool,
}

/// A Kafka LEADER_CHANGE control batch (control record type 2), as KRaft writes: key
/// `[version i16 = 0][type i16 = 2]`, value LeaderChangeMessage v0 (version, leader id,
/// voters, granting voters).
pub fn leader_change_batch(leader: NodeId, voters: &[NodeId], now_ms: u64) -> Vec<u8> {
    let key = [0u8, 0, 0, 2];
    let mut value = Vec::with_capacity(16 + 8 * voters.len());
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&(leader as i32).to_be_bytes());
    for _ in 0..2 {
        value.extend_from_slice(&(voters.len() as i32).to_be_bytes());
        for v in voters {
            value.extend_from_slice(&(*v as i32).to_be_bytes());
        }
    }
    batch::build::control_batch(&key, &value, now_ms as i64)
}
