//! Kafka API handlers, one file per API (the ones in api.rs move here as they change).

pub mod create_partitions;
pub mod delete_records;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_topic_partitions;

use crate::shard::Shard;

/// Who leads and holds a partition, as Metadata and DescribeTopicPartitions report it:
/// one place, so the two answers never disagree.
pub struct Placement {
    pub leader: i32,
    /// -1: no epoch validation (OffsetForLeaderEpoch) is needed on a single broker.
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// Every partition lives on this broker alone until partitions are replicated.
pub fn placement(shard: &Shard, _topic: &str, _partition: i32) -> Placement {
    let node = shard.cfg.node_id;
    Placement {
        leader: node,
        leader_epoch: -1,
        replicas: vec![node],
        isr: vec![node],
    }
}
