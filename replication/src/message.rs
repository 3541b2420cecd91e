//! What replicas say to each other about one group.

use bytes::Bytes;

use crate::{NodeId, Offset, Term};

/// One Raft message of one group. Offsets are Kafka offsets; an "end" is one past the
/// last offset (an exclusive bound), so an empty log has end 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// "Would you vote for me in `term`?" Changes no state on either side, so a node that
    /// rejoins after a partition cannot disrupt a healthy leader.
    PreVote {
        term: Term,
        last_term: Term,
        end: Offset,
    },
    PreVoteResponse {
        term: Term,
        granted: bool,
    },
    Vote {
        term: Term,
        last_term: Term,
        end: Offset,
        /// Campaigning because the leader of `term - 1` handed over (`TimeoutNow`): voters
        /// grant it within that leader's lease, which the leader gave up first.
        transfer: bool,
    },
    VoteResponse {
        term: Term,
        granted: bool,
    },
    Append(Append),
    /// Leadership transfer: the leader of `term`, having stepped down, tells a replica
    /// holding all of its log to campaign now (Raft's TimeoutNow, thesis 3.10).
    TimeoutNow {
        term: Term,
    },
    AppendResponse {
        term: Term,
        /// On success: the end of the prefix known to match the leader, all durable.
        /// On failure: where the leader should retry from.
        end: Offset,
        success: bool,
        /// The `prev_end` of the request answered, so stale rejections can be ignored.
        prev_end: Offset,
        echo_ms: u64,
    },
}

impl Message {
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::AppendResponse { term, .. }
            | Message::TimeoutNow { term } => *term,
            Message::Append(a) => a.term,
        }
    }
}

/// Entries (record batches, offsets and epoch already set) continuing the log after
/// `prev_end`, whose previous entry has term `prev_term`. Empty: a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub term: Term,
    pub prev_end: Offset,
    pub prev_term: Term,
    pub commit: Offset,
    pub entries: Vec<Bytes>,
    /// The leader's clock when sent, echoed back: the basis of its lease.
    pub sent_ms: u64,
    /// The leader's log start: it holds nothing below (retention, DeleteRecords). A
    /// follower moves its own start up to it (within its commit), and one that cannot
    /// continue the leader's log at or below it starts its log again there (Kafka's
    /// truncate-fully-and-start-at).
    pub log_start: Offset,
}

/// A message addressed to a node.
pub type Outgoing = (NodeId, Message);
