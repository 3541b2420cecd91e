//! corelog's replication core: Raft per partition, with the Kafka log as the Raft log.
//!
//! Sans-IO, in the style of quinn-proto: no sockets, no files, no clock, no threads, no
//! randomness but a seeded generator. Inputs are method calls carrying `now`; outputs
//! (messages, storage operations, hard state) are drained by a driver. The glommio broker
//! and the madsim simulator are two such drivers.
//!
//! - An entry is a RecordBatch v2; its term is the batch's `partitionLeaderEpoch`; its
//!   index is the Kafka offset. The commit index is the high watermark.
//! - [`raft::Raft`] is one group; [`node::Node`] runs many groups on one node and batches
//!   their messages per peer; [`frame`] puts those batches on the wire with rkyv.
//!
//! - [`driver`] carries out a node's ready work on storage and the network: the one
//!   replica driver the broker and the simulator both run, generic over the `Disk`.
//!
//! **Invariant:** this crate depends on no async runtime (glommio, madsim, tokio), never
//! reads the clock and touches files only through storage's `Disk`. `tests/invariants.rs`
//! checks the dependency graph and the source.

pub mod controller;
pub mod driver;
pub mod epochs;
pub mod frame;
pub mod message;
pub mod node;
pub mod producers;
pub mod raft;
pub mod security;

#[cfg(test)]
mod cluster;

pub use epochs::EpochCache;
pub use message::{Append, Message};
pub use node::{Envelope, GroupId, LeaderClaim, Node};
pub use raft::{HardState, LogState, ProposeError, Raft, RaftConfig, Ready, Role, StorageOp};

pub type NodeId = u32;
/// A Raft term; stored in batches as the i32 `partitionLeaderEpoch`.
pub type Term = u32;
/// A Kafka offset: the Raft log index.
pub type Offset = u64;

/// Known protocol bugs that the simulator's checker must catch; compiled only with the
/// `inject-bugs` feature, so no release build can switch them on.
#[cfg(feature = "inject-bugs")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Commit by counting replicas of an entry from an earlier term (Raft fig. 8).
    pub commit_old_term: bool,
    /// Acknowledge appended entries before storage reports them durable.
    pub ack_before_fsync: bool,
    /// Grant a vote even after voting for someone else in the same term.
    pub double_vote: bool,
    /// Grant votes without the election restriction (candidate's log at least as up to
    /// date as ours, Raft 5.4.1).
    pub vote_ignores_log: bool,
    /// Let a replica's own policies move its log start over what is not yet committed.
    pub start_past_commit: bool,
    /// Leadership transfer without its checks: the leader hands over before the target
    /// holds its whole log, and the target leads at once instead of winning an election.
    pub transfer_unchecked: bool,
}

#[cfg(feature = "inject-bugs")]
impl Bugs {
    /// The bugs the simulator's swarm must catch within 200 seeds (`--inject-bug`).
    /// `commit_old_term` is not among them: the LEADER_CHANGE batch every new leader
    /// writes leaves it a window of one round trip, which random faults hit about once in
    /// 3000 seeds; a deterministic figure-8 test in `cluster.rs` covers it instead.
    pub const NAMES: [&'static str; 5] = [
        "ack-before-fsync",
        "double-vote",
        "vote-ignores-log",
        "start-past-commit",
        "transfer-unchecked",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        let mut b = Self::default();
        match name {
            "ack-before-fsync" => b.ack_before_fsync = true,
            "double-vote" => b.double_vote = true,
            "vote-ignores-log" => b.vote_ignores_log = true,
            "start-past-commit" => b.start_past_commit = true,
            "transfer-unchecked" => b.transfer_unchecked = true,
            _ => return None,
        }
        Some(b)
    }
}
