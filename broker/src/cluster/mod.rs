//! The broker as one of a cluster: the RPC transport between brokers (`transport.rs`) and
//! the controller group that holds the cluster's metadata (`controller.rs`).
//!
//! A single-node broker (no voters, or itself alone) uses none of this: its partitions
//! are groups of one and its metadata the JSON file of `topics.rs`.

pub mod claims;
pub mod controller;
pub mod groups;
pub mod metadata;
pub mod transport;

use std::rc::Rc;

use corelog_replication::driver::Io;
use corelog_replication::{Envelope, NodeId};

use crate::util::{mono_ms, wall_ms};

/// What a shard of a clustered broker shares among its groups.
pub struct ClusterCtx {
    pub me: NodeId,
    /// (node id, RPC address) of every voter, this broker included.
    pub voters: Vec<(NodeId, String)>,
    pub peers: Rc<transport::Peers>,
}

impl ClusterCtx {
    pub fn voter_ids(&self) -> Vec<NodeId> {
        self.voters.iter().map(|(id, _)| *id).collect()
    }
}

/// The replica driver's I/O for a broker's groups: the broker's clocks, and the shard's
/// RPC links (none for a partition of a single-node broker).
pub struct RpcIo {
    pub peers: Option<Rc<transport::Peers>>,
}

impl Io for RpcIo {
    fn now_ms(&self) -> u64 {
        mono_ms()
    }

    fn wall_ms(&self) -> i64 {
        wall_ms()
    }

    async fn send(&mut self, to: NodeId, env: Envelope) {
        match &self.peers {
            Some(p) => p.send(to, env),
            None => tracing::error!(to, "a partition of one broker addressed a peer"),
        }
    }

    fn event(&mut self, what: String) {
        tracing::warn!("{what}");
    }
}
