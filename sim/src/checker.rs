//! The history of a run and the properties it must have.
//!
//! Every client operation and every commit a node makes is reported here as it happens;
//! violations are recorded with the event that revealed them:
//! - no acknowledged record lost (checked at the end by reading every partition back);
//! - nothing read that was not written;
//! - each offset of a partition bound to one batch forever, with contiguous offsets;
//! - replicas never diverge at or below their commit index (every committed batch is
//!   compared with the first commit of that offset by any node);
//! - no record twice in a partition: clients produce idempotently and retry a batch until
//!   it is acknowledged, so the producer state every replica keeps must catch each retry,
//!   across failovers and truncations;
//! - at most one leader per term;
//! - every broker that applied the controller log to the same offset holds the same
//!   cluster metadata;
//! - liveness: after faults heal, every partition elects a leader and commits in time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use corelog_replication::{GroupId, NodeId, Offset, Term};

/// What identifies a batch across replicas and reads: the one value of a workload batch,
/// or the checksum of any other batch (control batches).
pub type Identity = String;

/// The head of an identity (workload values are padded to a kilobyte).
fn short(id: &str) -> &str {
    let mut end = id.len().min(32);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

/// The controller group, whose writes are not idempotent.
const CONTROLLER: GroupId = corelog_replication::controller::CONTROLLER_GROUP;

#[derive(Default)]
pub struct History {
    hash: u64,
    tail: VecDeque<String>,
    events: u64,
    attempted: BTreeSet<String>,
    acked: BTreeMap<String, (GroupId, Offset)>,
    bound: BTreeMap<(GroupId, Offset), Identity>,
    /// Where each workload record of a partition was first seen: every partition write is
    /// an idempotent produce, so a record at two offsets is a duplicate the broker let in.
    placed: BTreeMap<Identity, (GroupId, Offset)>,
    committed: BTreeMap<(GroupId, Offset), (Offset, u32, NodeId)>,
    leaders: BTreeMap<(GroupId, Term), NodeId>,
    /// Controller offset applied -> (metadata fingerprint, first node to report it).
    metadata: BTreeMap<Offset, (u64, NodeId)>,
    /// Per group, the highest log start any replica has had.
    start_floor: BTreeMap<GroupId, Offset>,
    pub violations: Vec<String>,
    pub acked_count: u64,
    pub reads: u64,
}

const TAIL: usize = 40;

impl History {
    pub fn new() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            ..Self::default()
        }
    }

    /// Adds an event to the trace: its hash and the short tail printed on failure.
    pub fn event(&mut self, now_ms: u64, text: String) {
        for b in now_ms.to_le_bytes().iter().chain(text.as_bytes()) {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.events += 1;
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(format!("{now_ms:>7} ms  {text}"));
    }

    pub fn trace_hash(&self) -> u64 {
        self.hash ^ self.events
    }

    pub fn tail(&self) -> impl Iterator<Item = &String> {
        self.tail.iter()
    }

    fn violate(&mut self, now_ms: u64, what: String) {
        self.event(now_ms, format!("VIOLATION {what}"));
        self.violations.push(format!("at {now_ms} ms: {what}"));
    }

    pub fn attempt(&mut self, value: &str) {
        self.attempted.insert(value.to_string());
    }

    pub fn ack(&mut self, now_ms: u64, value: &str, group: GroupId, offset: Offset) {
        self.acked_count += 1;
        self.event(now_ms, format!("ack {value} g{group}@{offset}"));
        self.bind(now_ms, group, offset, value.to_string());
        if let Some(prev) = self.acked.insert(value.to_string(), (group, offset)) {
            if prev != (group, offset) {
                self.violate(
                    now_ms,
                    format!(
                        "{} acknowledged at g{group}@{offset} and at g{}@{}",
                        short(value),
                        prev.0,
                        prev.1
                    ),
                );
            }
        }
    }

    fn bind(&mut self, now_ms: u64, group: GroupId, offset: Offset, id: Identity) {
        match self.bound.get(&(group, offset)) {
            Some(old) if *old != id => {
                let old = old.clone();
                self.violate(
                    now_ms,
                    format!(
                        "offset g{group}@{offset} holds {}, earlier {}",
                        short(&id),
                        short(&old)
                    ),
                );
            }
            Some(_) => {}
            None => {
                let workload = group != CONTROLLER && !id.starts_with("batch:");
                if workload {
                    match self.placed.get(&id) {
                        // A retry of a batch whose copy went below the log start may be
                        // appended again: its producer's state can go with it (as in
                        // Kafka, idempotence holds while a producer's batches are kept).
                        Some(&(g, o))
                            if (g, o) != (group, offset)
                                && o < self.start_floor.get(&g).copied().unwrap_or(0) =>
                        {
                            self.event(
                                now_ms,
                                format!("{} again at g{group}@{offset}: its copy at {o} is below the log start", short(&id)),
                            );
                        }
                        Some(&(g, o)) if (g, o) != (group, offset) => self.violate(
                            now_ms,
                            format!(
                                "{} is in the log twice: g{g}@{o} and g{group}@{offset} (an idempotent retry was appended again)",
                                short(&id)
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            self.placed.insert(id.clone(), (group, offset));
                        }
                    }
                }
                self.bound.insert((group, offset), id);
            }
        }
    }

    /// A client read `batches` (base offset, identity, is data) starting at `from`.
    pub fn read(
        &mut self,
        now_ms: u64,
        group: GroupId,
        from: Offset,
        batches: &[(Offset, Offset, Identity, bool)],
    ) {
        self.reads += 1;
        let mut expect: Option<Offset> = None;
        for (i, (base, end, id, data)) in batches.iter().enumerate() {
            if i == 0 && !(*base <= from && from < *end) {
                self.violate(
                    now_ms,
                    format!("read of g{group} from {from} began with batch {base}..{end}"),
                );
            }
            if let Some(e) = expect {
                if *base != e {
                    self.violate(
                        now_ms,
                        format!("read of g{group}: offsets jump from {e} to {base}"),
                    );
                }
            }
            expect = Some(*end);
            if *data && !self.attempted.contains(id) {
                self.violate(
                    now_ms,
                    format!(
                        "read {} at g{group}@{base}, which no client wrote",
                        short(id)
                    ),
                );
            }
            self.bind(now_ms, group, *base, id.clone());
        }
        self.event(
            now_ms,
            format!("read g{group} from {from}: {} batches", batches.len()),
        );
    }

    /// `node` considers the batch `base..end` with checksum `crc` committed.
    pub fn committed(
        &mut self,
        now_ms: u64,
        node: NodeId,
        group: GroupId,
        base: Offset,
        end: Offset,
        crc: u32,
    ) {
        match self.committed.get(&(group, base)) {
            Some(&(e, c, first)) if (e, c) != (end, crc) => {
                self.violate(
                    now_ms,
                    format!("replicas diverge at committed g{group}@{base}: node {first} has ..{e} crc {c:08x}, node {node} ..{end} crc {crc:08x}"),
                );
            }
            Some(_) => {}
            None => {
                self.committed.insert((group, base), (end, crc, node));
            }
        }
    }

    pub fn leader(&mut self, now_ms: u64, group: GroupId, term: Term, node: NodeId) {
        match self.leaders.get(&(group, term)) {
            Some(&other) if other != node => {
                self.violate(
                    now_ms,
                    format!("two leaders in term {term} of g{group}: {other} and {node}"),
                );
            }
            Some(_) => {}
            None => {
                self.event(now_ms, format!("node {node} leads g{group} term {term}"));
                self.leaders.insert((group, term), node);
            }
        }
    }

    /// `node` applied the controller log up to `applied` and holds metadata `fingerprint`.
    pub fn metadata(&mut self, now_ms: u64, node: NodeId, applied: Offset, fingerprint: u64) {
        match self.metadata.get(&applied) {
            Some(&(fp, first)) if fp != fingerprint => {
                self.violate(
                    now_ms,
                    format!("metadata diverges after controller offset {applied}: node {first} {fp:016x}, node {node} {fingerprint:016x}"),
                );
            }
            Some(_) => {}
            None => {
                self.metadata.insert(applied, (fingerprint, node));
            }
        }
    }

    /// A replica of `group` moved its log start to `offset`.
    pub fn start_seen(&mut self, group: GroupId, offset: Offset) {
        let e = self.start_floor.entry(group).or_insert(0);
        *e = (*e).max(offset);
    }

    /// Any other broken invariant a node or the harness notices.
    pub fn invariant(&mut self, now_ms: u64, what: String) {
        self.violate(now_ms, what);
    }

    pub fn liveness(&mut self, now_ms: u64, what: String) {
        self.violate(now_ms, format!("liveness: {what}"));
    }

    /// After the final read-back: every acknowledged value at or above its partition's
    /// final log start must sit at its offset (below it, it was deleted on purpose; the
    /// harness checks that no start ever passed what was committed).
    pub fn check_acked(
        &mut self,
        now_ms: u64,
        final_log: &BTreeMap<(GroupId, Offset), Identity>,
        final_start: &BTreeMap<GroupId, Offset>,
    ) {
        let lost: Vec<(String, GroupId, Offset)> = self
            .acked
            .iter()
            .filter(|(_, (g, o))| *o >= final_start.get(g).copied().unwrap_or(0))
            .filter(|(v, (g, o))| final_log.get(&(*g, *o)) != Some(*v))
            .map(|(v, (g, o))| (v.clone(), *g, *o))
            .collect();
        for (v, g, o) in lost.into_iter().take(5) {
            let found = final_log
                .get(&(g, o))
                .cloned()
                .unwrap_or_else(|| "nothing".into());
            self.violate(
                now_ms,
                format!(
                    "acknowledged {} at g{g}@{o} is lost (found {})",
                    short(&v),
                    short(&found)
                ),
            );
        }
    }
}
