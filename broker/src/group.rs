//! The consumer group coordinator (Kafka's classic protocol). The broker runs each group's
//! state machine (Empty, PreparingRebalance, CompletingRebalance, Stable, Dead) and relays
//! the leader's assignment; the assignors themselves run in the clients.
//!
//! A group lives on one shard: the owner of its offsets partition
//! (`__consumer_offsets-N`, N = hash of the group id). Committed offsets are records in
//! that partition, written through the same partition task and replication group as any
//! produce, and read back into memory when the shard starts (the latest record per key
//! wins; an empty value deletes).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::channel::oneshot;

use crate::errors as code;

/// Partitions of the internal offsets log. Fixed forever: a group's partition must not
/// move when the shard count changes.
pub const OFFSETS_PARTITIONS: i32 = 8;
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

pub fn offsets_partition(group: &str) -> i32 {
    (crc32c::crc32c(group.as_bytes()) % OFFSETS_PARTITIONS as u32) as i32
}

pub const MIN_SESSION_TIMEOUT_MS: i32 = 1_000;
pub const MAX_SESSION_TIMEOUT_MS: i32 = 1_800_000;
/// How long a newly formed group waits for more members before its first generation
/// (Kafka's `group.initial.rebalance.delay.ms`, shortened).
const INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(300);
const MAX_METADATA_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: (member id, instance id, metadata) of every member.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    join_reply: Option<oneshot::Sender<JoinOutcome>>,
    sync_reply: Option<oneshot::Sender<SyncOutcome>>,
    last_seen: Instant,
    /// Order of arrival, for choosing a leader.
    seq: u64,
}

impl Member {
    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
}

pub struct Group {
    pub id: String,
    pub state: State,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined (KIP-394).
    pending: BTreeMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// Not before this (initial delay of a new group).
    not_before: Option<Instant>,
    pub offsets: BTreeMap<(String, i32), Committed>,
    next_seq: u64,
}

pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a member without an id gets one back with MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

/// What a join needs from the caller: an answer now, or a wait.
pub enum Joined {
    Now(JoinOutcome),
    Wait(oneshot::Receiver<JoinOutcome>),
}

pub enum Synced {
    Now(SyncOutcome),
    Wait(oneshot::Receiver<SyncOutcome>),
}

fn err_join(error: i16, member_id: &str) -> Joined {
    Joined::Now(JoinOutcome {
        error,
        generation: -1,
        member_id: member_id.to_string(),
        ..Default::default()
    })
}

impl Group {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            state: State::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            rebalance_deadline: None,
            not_before: None,
            offsets: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub fn join(&mut self, req: JoinRequest, now: Instant) -> Joined {
        let session = req.session_timeout_ms;
        if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&session) {
            return err_join(26, &req.member_id); // INVALID_SESSION_TIMEOUT
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return err_join(23, &req.member_id); // INCONSISTENT_GROUP_PROTOCOL
        }
        if !self.members.is_empty() {
            let same_type = self.protocol_type.as_deref() == Some(req.protocol_type.as_str());
            let shared = req.protocols.iter().any(|(n, _)| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            });
            if !same_type || !shared {
                return err_join(23, &req.member_id);
            }
        }
        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            member_id = format!(
                "{}-{}",
                req.client_id,
                uuid::Uuid::from_u128(fastrand::u128(..))
            );
            if let Some(instance) = &req.instance_id {
                // A static member coming back (KIP-345): it takes over its old identity.
                if let Some(old) = self
                    .members
                    .values()
                    .find(|m| m.instance_id.as_deref() == Some(instance))
                    .map(|m| m.id.clone())
                {
                    return self.replace_static(&old, member_id, req, now);
                }
            } else if req.require_known_member_id {
                self.pending.insert(
                    member_id.clone(),
                    now + Duration::from_millis(session as u64),
                );
                return err_join(79, &member_id); // MEMBER_ID_REQUIRED
            }
        } else if !self.members.contains_key(&member_id)
            && self.pending.remove(&member_id).is_none()
        {
            return err_join(code_unknown_member(), &member_id);
        } else if let Some(m) = self.members.get(&member_id) {
            if req.instance_id.is_some() && m.instance_id != req.instance_id {
                return err_join(82, &member_id); // FENCED_INSTANCE_ID
            }
        }
        let (tx, rx) = oneshot::channel();
        let seq = self.next_seq;
        self.next_seq += 1;
        let m = self
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                id: member_id.clone(),
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: Duration::ZERO,
                rebalance_timeout: Duration::ZERO,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                join_reply: None,
                sync_reply: None,
                last_seen: now,
                seq,
            });
        m.session_timeout = Duration::from_millis(session as u64);
        m.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms.max(session) as u64);
        let unchanged = m.protocols == req.protocols;
        tracing::debug!(group = %self.id, member = %member_id, state = self.state.name(), unchanged, leader = self.leader.as_deref() == Some(&member_id), "join");
        m.protocols = req.protocols;
        m.last_seen = now;
        // An earlier join of the same member still waiting is superseded: dropping its
        // sender answers it (REBALANCE_IN_PROGRESS, in coordinator.rs).
        m.join_reply = Some(tx);
        self.protocol_type = Some(req.protocol_type);
        // A follower rejoining a stable group with what it had: answer with the current
        // generation instead of disturbing everyone.
        if self.state == State::Stable && unchanged && self.leader.as_deref() != Some(&member_id) {
            let m = self.members.get_mut(&member_id).expect("just inserted");
            let tx = m.join_reply.take().expect("just set");
            let _ = tx.send(self.join_outcome(&member_id, false));
            return Joined::Wait(rx);
        }
        match self.state {
            State::PreparingRebalance => {}
            State::Empty | State::Dead => {
                self.prepare_rebalance(now);
                self.not_before = Some(now + INITIAL_REBALANCE_DELAY);
            }
            State::Stable | State::CompletingRebalance => self.prepare_rebalance(now),
        }
        self.maybe_complete_join(now);
        Joined::Wait(rx)
    }

    fn replace_static(
        &mut self,
        old: &str,
        new_id: String,
        req: JoinRequest,
        now: Instant,
    ) -> Joined {
        let mut m = self.members.remove(old).expect("found above");
        if let Some(tx) = m.join_reply.take() {
            let _ = tx.send(JoinOutcome {
                error: 82, // FENCED_INSTANCE_ID
                generation: -1,
                member_id: old.to_string(),
                ..Default::default()
            });
        }
        if let Some(tx) = m.sync_reply.take() {
            let _ = tx.send(SyncOutcome {
                error: 82,
                ..Default::default()
            });
        }
        let was_leader = self.leader.as_deref() == Some(old);
        let unchanged = m.protocols == req.protocols;
        m.id = new_id.clone();
        m.protocols = req.protocols;
        m.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
        m.rebalance_timeout =
            Duration::from_millis(req.rebalance_timeout_ms.max(req.session_timeout_ms) as u64);
        m.last_seen = now;
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        self.members.insert(new_id.clone(), m);
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        if self.state == State::Stable && unchanged {
            // The restarted static member gets its old assignment back: no rebalance.
            return Joined::Now(self.join_outcome(&new_id, false));
        }
        let (tx, rx) = oneshot::channel();
        self.members.get_mut(&new_id).expect("inserted").join_reply = Some(tx);
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(now);
        }
        self.maybe_complete_join(now);
        Joined::Wait(rx)
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == State::CompletingRebalance {
            // Members waiting in SyncGroup must rejoin.
            for m in self.members.values_mut() {
                if let Some(tx) = m.sync_reply.take() {
                    let _ = tx.send(SyncOutcome {
                        error: 27, // REBALANCE_IN_PROGRESS
                        ..Default::default()
                    });
                }
            }
        }
        tracing::debug!(group = %self.id, from = self.state.name(), members = self.members.len(), "rebalance");
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(30));
        self.state = State::PreparingRebalance;
        self.rebalance_deadline = Some(now + timeout);
    }

    /// Completes the join phase once every member has rejoined (or at the deadline, in
    /// `tick`, without the stragglers).
    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        if self.not_before.is_some_and(|t| now < t) {
            return;
        }
        if self.members.values().all(|m| m.join_reply.is_some()) {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        self.members.retain(|_, m| m.join_reply.is_some());
        self.not_before = None;
        self.rebalance_deadline = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.leader = None;
            self.protocol = None;
            return;
        }
        self.protocol = self.choose_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.seq)
                .map(|m| m.id.clone());
        }
        self.state = State::CompletingRebalance;
        tracing::debug!(group = %self.id, generation = self.generation, members = self.members.len(), leader = ?self.leader, protocol = ?self.protocol, "join phase complete");
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let is_leader = self.leader.as_deref() == Some(id.as_str());
            let outcome = self.join_outcome(&id, is_leader);
            let m = self.members.get_mut(&id).expect("listed");
            m.last_seen = now;
            m.assignment = Bytes::new();
            if let Some(tx) = m.join_reply.take() {
                let _ = tx.send(outcome);
            }
        }
    }

    fn join_outcome(&self, member_id: &str, with_members: bool) -> JoinOutcome {
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinOutcome {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if with_members {
                self.members
                    .values()
                    .map(|m| {
                        (
                            m.id.clone(),
                            m.instance_id.clone(),
                            m.metadata_for(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The protocol every member supports with the most first-choice votes.
    fn choose_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| &p == n))
            })
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(p, _)| candidates.contains(&p)) {
                *votes.entry(n).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|n| {
                (
                    votes.get(*n).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|c| c == *n)),
                )
            })
            .map(|n| (*n).clone())
    }

    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Synced {
        let now_err = |error| {
            Synced::Now(SyncOutcome {
                error,
                ..Default::default()
            })
        };
        let e = self.check_member(member_id, instance_id);
        if e != code::NONE {
            return now_err(e);
        }
        let m = self.members.get_mut(member_id).expect("checked");
        if generation != self.generation {
            return now_err(22); // ILLEGAL_GENERATION
        }
        m.last_seen = now;
        match self.state {
            State::PreparingRebalance => now_err(27),
            State::Empty | State::Dead => now_err(code_unknown_member()),
            State::Stable => Synced::Now(self.sync_outcome(member_id)),
            State::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                m.sync_reply = Some(tx);
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    self.state = State::Stable;
                    tracing::debug!(group = %self.id, generation = self.generation, "stable");
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let outcome = self.sync_outcome(&id);
                        if let Some(tx) =
                            self.members.get_mut(&id).and_then(|m| m.sync_reply.take())
                        {
                            let _ = tx.send(outcome);
                        }
                    }
                }
                Synced::Wait(rx)
            }
        }
    }

    fn sync_outcome(&self, member_id: &str) -> SyncOutcome {
        SyncOutcome {
            error: code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// Whether `member_id` may act in this group: UNKNOWN_MEMBER_ID when it is not a
    /// member; FENCED_INSTANCE_ID (KIP-345) when it names a static instance id that now
    /// belongs to another member id (it was replaced by a newer join) or that is not its
    /// own, so the old client stops instead of rejoining and ping-ponging.
    pub fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> i16 {
        if let Some(instance) = instance_id
            && let Some(owner) = self
                .members
                .values()
                .find(|m| m.instance_id.as_deref() == Some(instance))
            && owner.id != member_id
        {
            return 82; // FENCED_INSTANCE_ID
        }
        match self.members.get(member_id) {
            None => code_unknown_member(),
            Some(m) if instance_id.is_some() && m.instance_id.as_deref() != instance_id => 82,
            Some(_) => code::NONE,
        }
    }

    /// OffsetCommit as Kafka checks it: a current member of the current generation may
    /// commit while the group is PreparingRebalance (that is when consumers commit in their
    /// partitions-revoked callback); only CompletingRebalance refuses, with
    /// REBALANCE_IN_PROGRESS.
    pub fn check_commit(&self, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        let e = self.check_member(member_id, instance_id);
        if e != code::NONE {
            return e;
        }
        if generation != self.generation {
            return 22; // ILLEGAL_GENERATION
        }
        if self.state == State::CompletingRebalance {
            return 27; // REBALANCE_IN_PROGRESS
        }
        code::NONE
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        let e = self.check_member(member_id, instance_id);
        if e != code::NONE {
            return e;
        }
        let m = self.members.get_mut(member_id).expect("checked");
        if generation != self.generation {
            return 22;
        }
        m.last_seen = now;
        match self.state {
            State::PreparingRebalance => 27,
            State::Empty | State::Dead => code_unknown_member(),
            _ => code::NONE,
        }
    }

    /// LeaveGroup of one member (by id, or by instance id when the id is empty).
    pub fn leave(&mut self, member_id: &str, instance_id: Option<&str>, now: Instant) -> i16 {
        let id = if member_id.is_empty() {
            match self
                .members
                .values()
                .find(|m| instance_id.is_some() && m.instance_id.as_deref() == instance_id)
            {
                Some(m) => m.id.clone(),
                None => return code_unknown_member(),
            }
        } else {
            member_id.to_string()
        };
        if self.pending.remove(&id).is_some() {
            return code::NONE;
        }
        let e = self.check_member(&id, instance_id);
        if e != code::NONE {
            return e;
        }
        self.remove_member(&id, now);
        code::NONE
    }

    fn remove_member(&mut self, id: &str, now: Instant) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(tx) = m.join_reply.take() {
                let _ = tx.send(JoinOutcome {
                    error: code_unknown_member(),
                    generation: -1,
                    member_id: id.to_string(),
                    ..Default::default()
                });
            }
            if let Some(tx) = m.sync_reply.take() {
                let _ = tx.send(SyncOutcome {
                    error: code_unknown_member(),
                    ..Default::default()
                });
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        match self.state {
            State::Stable | State::CompletingRebalance => {
                if self.members.is_empty() {
                    self.state = State::Empty;
                    self.generation += 1;
                    self.protocol = None;
                } else {
                    self.prepare_rebalance(now);
                }
            }
            State::PreparingRebalance => self.maybe_complete_join(now),
            _ => {}
        }
    }

    /// Time passes: expired sessions leave, a rebalance past its deadline completes
    /// without the members that did not rejoin.
    pub fn tick(&mut self, now: Instant) {
        self.pending.retain(|_, until| *until > now);
        match self.state {
            State::PreparingRebalance => {
                // A member that has not rejoined yet still has to keep its session alive
                // (heartbeats answered REBALANCE_IN_PROGRESS count): a dead one leaves
                // now rather than holding everyone until the rebalance deadline.
                let expired: Vec<String> = self
                    .members
                    .values()
                    .filter(|m| m.join_reply.is_none() && m.last_seen + m.session_timeout < now)
                    .map(|m| m.id.clone())
                    .collect();
                for id in expired {
                    tracing::info!(group = %self.id, member = %id, "session expired during rebalance; member removed");
                    self.remove_member(&id, now);
                }
                if self.state != State::PreparingRebalance {
                } else if self.rebalance_deadline.is_some_and(|d| now >= d) {
                    self.complete_join(now);
                } else {
                    self.maybe_complete_join(now);
                }
            }
            State::Stable | State::CompletingRebalance => {
                let expired: Vec<String> = self
                    .members
                    .values()
                    .filter(|m| m.last_seen + m.session_timeout < now)
                    .map(|m| m.id.clone())
                    .collect();
                for id in expired {
                    tracing::info!(group = %self.id, member = %id, "session expired; member removed");
                    self.remove_member(&id, now);
                }
            }
            _ => {}
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Topics the members subscribe to (consumer protocol metadata), for OffsetDelete.
    pub fn subscribed_topics(&self) -> Vec<String> {
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut out = Vec::new();
        if self.protocol_type.as_deref() != Some("consumer") {
            return out;
        }
        for m in self.members.values() {
            out.extend(consumer_subscription(&m.metadata_for(&protocol)));
        }
        out.sort();
        out.dedup();
        out
    }
}

fn code_unknown_member() -> i16 {
    25 // UNKNOWN_MEMBER_ID
}

fn read_string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let len = b.get_i16();
    if len < 0 {
        return Some(String::new());
    }
    let len = len as usize;
    if b.remaining() < len {
        return None;
    }
    let s = String::from_utf8_lossy(&b[..len]).into_owned();
    b.advance(len);
    Some(s)
}

/// Topics of a ConsumerProtocolSubscription (version, then an array of topic names).
pub fn consumer_subscription(metadata: &Bytes) -> Vec<String> {
    let mut b = metadata.clone();
    let mut out = Vec::new();
    if b.remaining() < 6 {
        return out;
    }
    b.get_i16();
    let n = b.get_i32();
    for _ in 0..n.clamp(0, 100_000) {
        match read_string(&mut b) {
            Some(t) => out.push(t),
            None => break,
        }
    }
    out
}

/// (topic, partitions) of a ConsumerProtocolAssignment.
pub fn consumer_assignment(assignment: &Bytes) -> Vec<(String, Vec<i32>)> {
    let mut b = assignment.clone();
    let mut out = Vec::new();
    if b.remaining() < 6 {
        return out;
    }
    b.get_i16();
    let n = b.get_i32();
    for _ in 0..n.clamp(0, 100_000) {
        let Some(topic) = read_string(&mut b) else {
            break;
        };
        if b.remaining() < 4 {
            break;
        }
        let count = b.get_i32().clamp(0, 1_000_000) as usize;
        if b.remaining() < 4 * count {
            break;
        }
        let parts = (0..count).map(|_| b.get_i32()).collect();
        out.push((topic, parts));
    }
    out
}

/// The key and value of an offset-commit record in the offsets log.
pub fn offset_record(
    group: &str,
    topic: &str,
    partition: i32,
    c: Option<&Committed>,
) -> (Vec<u8>, Vec<u8>) {
    let mut key = Vec::with_capacity(8 + group.len() + topic.len());
    key.extend_from_slice(&1i16.to_be_bytes()); // record kind: offset commit, v1
    for s in [group, topic] {
        key.extend_from_slice(&(s.len() as u16).to_be_bytes());
        key.extend_from_slice(s.as_bytes());
    }
    key.extend_from_slice(&partition.to_be_bytes());
    let mut value = Vec::new();
    if let Some(c) = c {
        value.extend_from_slice(&c.offset.to_be_bytes());
        value.extend_from_slice(&c.leader_epoch.to_be_bytes());
        value.extend_from_slice(&c.commit_ms.to_be_bytes());
        value.extend_from_slice(&(c.metadata.len() as u16).to_be_bytes());
        value.extend_from_slice(c.metadata.as_bytes());
    }
    (key, value)
}

/// Parses an offset-commit record: ((group, topic, partition), None for a deletion).
#[allow(clippy::type_complexity)]
pub fn parse_offset_record(
    key: &[u8],
    value: Option<&[u8]>,
) -> Option<((String, String, i32), Option<Committed>)> {
    let mut k = Bytes::copy_from_slice(key);
    if k.remaining() < 2 || k.get_i16() != 1 {
        return None;
    }
    let mut strings = Vec::new();
    for _ in 0..2 {
        if k.remaining() < 2 {
            return None;
        }
        let len = k.get_u16() as usize;
        if k.remaining() < len {
            return None;
        }
        strings.push(String::from_utf8_lossy(&k[..len]).into_owned());
        k.advance(len);
    }
    if k.remaining() < 4 {
        return None;
    }
    let partition = k.get_i32();
    let topic = strings.pop()?;
    let group = strings.pop()?;
    let committed = match value {
        None | Some([]) => None,
        Some(v) => {
            let mut v = Bytes::copy_from_slice(v);
            if v.remaining() < 22 {
                return None;
            }
            let offset = v.get_i64();
            let leader_epoch = v.get_i32();
            let commit_ms = v.get_i64();
            let len = v.get_u16() as usize;
            if v.remaining() < len {
                return None;
            }
            Some(Committed {
                offset,
                leader_epoch,
                metadata: String::from_utf8_lossy(&v[..len]).into_owned(),
                commit_ms,
            })
        }
    };
    Some(((group, topic, partition), committed))
}

pub fn metadata_too_large(metadata: &str) -> bool {
    metadata.len() > MAX_METADATA_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(g: &mut Group, id: &str, now: Instant) -> Joined {
        join_as(g, id, None, now)
    }

    /// A join with an optional static instance id (`group.instance.id`).
    fn join_as(g: &mut Group, id: &str, instance: Option<&str>, now: Instant) -> Joined {
        g.join(
            JoinRequest {
                member_id: id.to_string(),
                instance_id: instance.map(str::to_string),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 10_000,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::from_static(b"m"))],
                require_known_member_id: true,
            },
            now,
        )
    }

    fn first_id(g: &mut Group, now: Instant) -> String {
        match join(g, "", now) {
            Joined::Now(o) => {
                assert_eq!(o.error, 79);
                o.member_id
            }
            Joined::Wait(_) => panic!("a new member must get MEMBER_ID_REQUIRED"),
        }
    }

    #[test]
    fn two_members_rebalance_and_sync_the_leaders_assignment() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let a = first_id(&mut g, t0);
        let b = first_id(&mut g, t0);
        let Joined::Wait(mut ja) = join(&mut g, &a, t0) else {
            panic!()
        };
        let Joined::Wait(mut jb) = join(&mut g, &b, t0) else {
            panic!()
        };
        assert_eq!(g.state, State::PreparingRebalance);
        // The initial delay holds the first generation back a moment.
        assert!(ja.try_recv().unwrap().is_none());
        g.tick(t0 + Duration::from_secs(1));
        let oa = ja.try_recv().unwrap().unwrap();
        let ob = jb.try_recv().unwrap().unwrap();
        assert_eq!((oa.generation, ob.generation), (1, 1));
        assert_eq!(oa.leader, a);
        assert_eq!(oa.members.len(), 2);
        assert!(ob.members.is_empty());
        let Synced::Wait(mut sb) = g.sync(&b, None, 1, vec![], t0) else {
            panic!()
        };
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        let Synced::Wait(mut sa) = g.sync(&a, None, 1, assignments, t0) else {
            panic!()
        };
        assert_eq!(
            sa.try_recv().unwrap().unwrap().assignment,
            Bytes::from_static(b"A")
        );
        assert_eq!(
            sb.try_recv().unwrap().unwrap().assignment,
            Bytes::from_static(b"B")
        );
        assert_eq!(g.state, State::Stable);
        assert_eq!(g.heartbeat(&a, None, 1, t0), code::NONE);
        assert_eq!(g.heartbeat(&a, None, 0, t0), 22);

        // b stops heartbeating: after its session it is gone and a must rejoin.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(g.heartbeat(&a, None, 1, later), code::NONE);
        g.tick(t0 + Duration::from_secs(11));
        assert!(!g.members.contains_key(&b));
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(g.heartbeat(&a, None, 1, t0 + Duration::from_secs(11)), 27);
        let Joined::Wait(mut ja) = join(&mut g, &a, t0 + Duration::from_secs(11)) else {
            panic!()
        };
        let o = ja.try_recv().unwrap().unwrap();
        assert_eq!((o.generation, o.members.len()), (2, 1));
    }

    /// Two members in a stable generation 1 (a the leader).
    fn stable_pair(g: &mut Group, t0: Instant) -> (String, String) {
        let a = first_id(g, t0);
        let b = first_id(g, t0);
        let (Joined::Wait(_), Joined::Wait(_)) = (join(g, &a, t0), join(g, &b, t0)) else {
            panic!()
        };
        g.tick(t0 + Duration::from_secs(1));
        let _ = g.sync(&b, None, 1, vec![], t0);
        let _ = g.sync(&a, None, 1, vec![], t0);
        assert_eq!(g.state, State::Stable);
        (a, b)
    }

    #[test]
    fn commits_are_accepted_while_preparing_a_rebalance_not_while_completing_it() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let (a, b) = stable_pair(&mut g, t0);
        assert_eq!(g.check_commit(&a, None, 1), code::NONE);
        // A third member joins: PreparingRebalance. a and b commit in their
        // partitions-revoked callbacks before they rejoin: accepted, as in Kafka.
        let c = first_id(&mut g, t0);
        let Joined::Wait(_jc) = join(&mut g, &c, t0) else {
            panic!()
        };
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(g.check_commit(&a, None, 1), code::NONE);
        assert_eq!(g.check_commit(&b, None, 1), code::NONE);
        assert_eq!(g.check_commit(&b, None, 0), 22);
        assert_eq!(g.check_commit("stranger", None, 1), 25);
        let (Joined::Wait(_ja), Joined::Wait(_jb)) = (join(&mut g, &a, t0), join(&mut g, &b, t0))
        else {
            panic!()
        };
        assert_eq!(g.state, State::CompletingRebalance);
        assert_eq!(g.check_commit(&a, None, 2), 27);
    }

    #[test]
    fn a_replaced_static_member_is_fenced_not_unknown() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let static_join = |g: &mut Group, id: &str| join_as(g, id, Some("instance-1"), t0);
        let Joined::Wait(mut j1) = static_join(&mut g, "") else {
            panic!("a static member joins without MEMBER_ID_REQUIRED")
        };
        g.tick(t0 + Duration::from_secs(1));
        let old = j1.try_recv().unwrap().unwrap().member_id;
        let _ = g.sync(&old, Some("instance-1"), 1, vec![], t0);
        // The same instance id joins again (a new process): it takes over.
        let _ = static_join(&mut g, "");
        let new = g.members.values().next().unwrap().id.clone();
        assert_ne!(new, old);
        let inst = Some("instance-1");
        assert_eq!(g.heartbeat(&old, inst, 1, t0), 82);
        assert!(matches!(g.sync(&old, inst, 1, vec![], t0), Synced::Now(o) if o.error == 82));
        assert_eq!(g.check_commit(&old, inst, 1), 82);
        assert_eq!(g.leave(&old, inst, t0), 82);
        assert!(
            g.members.contains_key(&new),
            "the fenced leave must not remove the new one"
        );
        // Without an instance id, an unknown member id is just unknown.
        assert_eq!(g.heartbeat(&old, None, 1, t0), 25);
    }

    #[test]
    fn leaving_last_member_empties_the_group() {
        let t0 = Instant::now();
        let mut g = Group::new("g");
        let a = first_id(&mut g, t0);
        let Joined::Wait(_ja) = join(&mut g, &a, t0) else {
            panic!()
        };
        g.tick(t0 + Duration::from_secs(1));
        assert_eq!(g.leave(&a, None, t0), code::NONE);
        assert_eq!(g.state, State::Empty);
        assert_eq!(g.leave(&a, None, t0), 25);
    }

    #[test]
    fn offset_records_round_trip() {
        let c = Committed {
            offset: 42,
            leader_epoch: -1,
            metadata: "m".into(),
            commit_ms: 7,
        };
        let (k, v) = offset_record("g", "t", 3, Some(&c));
        assert_eq!(
            parse_offset_record(&k, Some(&v)),
            Some((("g".into(), "t".into(), 3), Some(c)))
        );
        let (k, v) = offset_record("g", "t", 3, None);
        assert_eq!(
            parse_offset_record(&k, Some(&v)),
            Some((("g".into(), "t".into(), 3), None))
        );
        assert_eq!(parse_offset_record(b"junk", Some(b"")), None);
    }

    #[test]
    fn consumer_protocol_parsing() {
        // version 0, topics ["a", "bc"], no user data
        let sub =
            Bytes::from_static(b"\x00\x00\x00\x00\x00\x02\x00\x01a\x00\x02bc\xff\xff\xff\xff");
        assert_eq!(
            consumer_subscription(&sub),
            vec!["a".to_string(), "bc".to_string()]
        );
        let asg = Bytes::from_static(
            b"\x00\x00\x00\x00\x00\x01\x00\x01a\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03",
        );
        assert_eq!(
            consumer_assignment(&asg),
            vec![("a".to_string(), vec![0, 3])]
        );
    }
}
