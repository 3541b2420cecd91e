//! Kafka API handlers, one file per API (the ones in api.rs move here as they change).

pub mod acls;
pub mod create_partitions;
pub mod delete_records;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_topic_partitions;
pub mod offset_for_leader_epoch;
pub mod sasl;
pub mod scram;

use crate::shard::Shard;

/// Who leads and holds a partition, as Metadata and DescribeTopicPartitions report it:
/// one place, so the two answers never disagree.
pub struct Placement {
    /// LEADER_NOT_AVAILABLE while the partition has no known leader.
    pub error: i16,
    pub leader: i32,
    /// -1: no epoch validation (OffsetForLeaderEpoch) is needed on a single broker.
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Replicas on brokers not heard from lately.
    pub offline: Vec<i32>,
}

/// On a single-node broker every partition lives here alone. On a cluster: the replica
/// set from the controller's metadata, and the leader and epoch as this broker's replica
/// of the partition sees them, with the ISR of the leader's latest announcement
/// (`cluster/claims.rs`); a partition it holds no replica of is named as its leader
/// announced it, or LEADER_NOT_AVAILABLE while no fresh announcement names one.
pub fn placement(shard: &Shard, topic: &str, partition: i32) -> Placement {
    let node = shard.cfg.node_id;
    if shard.cluster.is_none() {
        return Placement {
            error: crate::errors::NONE,
            leader: node,
            leader_epoch: -1,
            replicas: vec![node],
            isr: vec![node],
            offline: Vec::new(),
        };
    }
    let meta = if topic == crate::group::OFFSETS_TOPIC {
        shard.internal.borrow().clone()
    } else {
        shard.topic(topic)
    };
    let replicas = meta
        .as_ref()
        .and_then(|m| m.replicas.get(partition as usize).cloned())
        .unwrap_or_default();
    let group = meta.and_then(|m| m.groups.get(partition as usize).copied());
    let now = std::time::Instant::now();
    let claims = shard.claims.borrow();
    let claimed = group.and_then(|g| claims.leader_of(g, now));
    // Kafka's offline replicas: those on brokers not heard from lately.
    let offline = replicas
        .iter()
        .copied()
        .filter(|&r| r != node && !claims.alive(r as u32, now))
        .collect();
    let ids = |v: &[u32]| v.iter().map(|n| *n as i32).collect::<Vec<i32>>();
    let unknown = |replicas, offline| Placement {
        error: crate::errors::LEADER_NOT_AVAILABLE,
        leader: -1,
        leader_epoch: -1,
        replicas,
        isr: Vec::new(),
        offline,
    };
    match shard.views.borrow().get(&(topic.to_string(), partition)) {
        Some(v) if v.leader >= 0 => Placement {
            error: crate::errors::NONE,
            leader: v.leader,
            leader_epoch: v.epoch,
            // A follower's own account of the ISR is a guess; the leader's claim of the
            // same term is the leader's.
            isr: match claimed {
                Some(c) if c.leader as i32 == v.leader && c.epoch as i32 == v.epoch => ids(&c.isr),
                _ => v.isr.clone(),
            },
            replicas,
            offline,
        },
        Some(_) => unknown(replicas, offline),
        // No replica here: the leader's announcement, if one is fresh.
        None => match claimed {
            Some(c) => Placement {
                error: crate::errors::NONE,
                leader: c.leader as i32,
                leader_epoch: c.epoch as i32,
                isr: ids(&c.isr),
                replicas,
                offline,
            },
            None => unknown(replicas, offline),
        },
    }
}

/// The brokers Metadata names: the registered ones on a cluster (this one at least),
/// this one alone otherwise. (id, host, port)
/// `listener`: the one the asking client came in through.
pub fn brokers(shard: &Shard, listener: usize) -> Vec<(i32, String, i32)> {
    let (host, port) = shard.cfg.advertised_for(listener);
    let me = (shard.cfg.node_id, host, port);
    if shard.cluster.is_none() {
        return vec![me];
    }
    let mut out: Vec<(i32, String, i32)> = shard
        .brokers
        .borrow()
        .iter()
        .map(|(id, (h, p))| (*id as i32, h.clone(), i32::from(*p)))
        .collect();
    if !out.iter().any(|b| b.0 == me.0) {
        out.push(me);
        out.sort();
    }
    out
}

/// The controller Metadata names: the controller group's leader on a cluster (this
/// broker while none is known), this broker otherwise.
pub fn controller_id(shard: &Shard) -> i32 {
    shard
        .controller_leader
        .get()
        .map_or(shard.cfg.node_id, |l| l as i32)
}

/// KIP-320's fencing: a request naming the leader epoch it saw (`-1`: none) is refused
/// with FENCED_LEADER_EPOCH when that epoch is older than this leader's, and with
/// UNKNOWN_LEADER_EPOCH when it is newer (this broker has not caught up yet). A
/// single-node broker reports no epochs, so clients send none.
pub fn check_leader_epoch(
    shard: &Shard,
    topic: &str,
    partition: i32,
    current: i32,
) -> Result<(), i16> {
    if current < 0 || shard.cluster.is_none() {
        return Ok(());
    }
    let Some(epoch) = shard
        .views
        .borrow()
        .get(&(topic.to_string(), partition))
        .map(|v| v.epoch)
    else {
        return Ok(()); // not hosted here: the partition answers NOT_LEADER_OR_FOLLOWER
    };
    match current.cmp(&epoch) {
        std::cmp::Ordering::Less => Err(crate::errors::FENCED_LEADER_EPOCH),
        std::cmp::Ordering::Greater => Err(crate::errors::UNKNOWN_LEADER_EPOCH),
        std::cmp::Ordering::Equal => Ok(()),
    }
}
