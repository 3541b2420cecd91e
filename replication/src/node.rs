//! Many groups on one node. Messages from all groups to the same peer leave in one
//! [`Envelope`] per step, so a node pair exchanges one heartbeat frame per tick however
//! many partitions they share.

use std::collections::BTreeMap;

use crate::epochs::EpochCache;
use crate::message::Message;
use crate::raft::{HardState, Raft, StorageOp};
use bytes::Bytes;

use crate::{NodeId, Offset};

/// A replication group: a partition, or the controller (group 0 by convention).
pub type GroupId = u32;

/// Everything one node sends another in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: NodeId,
    pub items: Vec<(GroupId, Message)>,
    /// An announcement of every group the sender leads, to every broker: those holding no
    /// replica of a group learn its leader only from these. None: not an announcement.
    /// Not Raft state; Raft never reads them.
    pub claims: Option<Vec<LeaderClaim>>,
    /// Controller record batches a broker that does not lead the controller asks its
    /// leader to propose (a user or ACL change a client sent it). Not Raft state: the
    /// receiver decides, and proposes through its own `Raft` like any of its proposals.
    pub proposals: Vec<Bytes>,
}

/// "I lead `group` in `epoch` (its term), with these replicas in sync."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderClaim {
    pub group: GroupId,
    pub epoch: crate::Term,
    pub isr: Vec<NodeId>,
}

/// Storage work of one group, to be made durable before the envelopes leave.
#[derive(Debug, Default)]
pub struct GroupWork {
    pub group: GroupId,
    pub hard_state: Option<HardState>,
    /// See [`crate::Ready::epochs`] for when to persist it.
    pub epochs: Option<EpochCache>,
    pub storage: Vec<StorageOp>,
}

#[derive(Debug, Default)]
pub struct NodeReady {
    pub work: Vec<GroupWork>,
    pub envelopes: Vec<(NodeId, Envelope)>,
}

pub struct Node {
    id: NodeId,
    groups: BTreeMap<GroupId, Raft>,
}

impl Node {
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            groups: BTreeMap::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn add_group(&mut self, group: GroupId, raft: Raft) {
        assert_eq!(raft.id(), self.id, "a group's Raft must run as this node");
        self.groups.insert(group, raft);
    }

    pub fn group(&self, group: GroupId) -> Option<&Raft> {
        self.groups.get(&group)
    }

    pub fn group_mut(&mut self, group: GroupId) -> Option<&mut Raft> {
        self.groups.get_mut(&group)
    }

    pub fn groups(&self) -> impl Iterator<Item = (GroupId, &Raft)> {
        self.groups.iter().map(|(g, r)| (*g, r))
    }

    pub fn on_envelope(&mut self, now: u64, env: Envelope) {
        for (group, msg) in env.items {
            if let Some(raft) = self.groups.get_mut(&group) {
                raft.on_message(now, env.from, msg);
            }
        }
    }

    pub fn on_tick(&mut self, now: u64) {
        for raft in self.groups.values_mut() {
            if now >= raft.next_deadline() {
                raft.on_tick(now);
            }
        }
    }

    pub fn on_persisted(&mut self, now: u64, group: GroupId, durable_end: Offset) {
        if let Some(raft) = self.groups.get_mut(&group) {
            raft.on_persisted(now, durable_end);
        }
    }

    pub fn next_deadline(&self) -> u64 {
        self.groups
            .values()
            .map(Raft::next_deadline)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Drains every group: storage work per group, messages merged into one envelope per
    /// destination.
    pub fn take_ready(&mut self) -> NodeReady {
        let mut out = NodeReady::default();
        let mut by_peer: BTreeMap<NodeId, Vec<(GroupId, Message)>> = BTreeMap::new();
        for (&group, raft) in self.groups.iter_mut() {
            let ready = raft.take_ready();
            if ready.hard_state.is_some() || ready.epochs.is_some() || !ready.storage.is_empty() {
                out.work.push(GroupWork {
                    group,
                    hard_state: ready.hard_state,
                    epochs: ready.epochs,
                    storage: ready.storage,
                });
            }
            for (to, msg) in ready.messages {
                by_peer.entry(to).or_default().push((group, msg));
            }
        }
        out.envelopes = by_peer
            .into_iter()
            .map(|(to, items)| {
                (
                    to,
                    Envelope {
                        from: self.id,
                        items,
                        claims: None,
                        proposals: Vec::new(),
                    },
                )
            })
            .collect();
        out
    }
}
