//! Consumer groups on a cluster: the coordinator of a group is the leader of the group's
//! `__consumer_offsets` partition (a replicated partition like any other, created by the
//! controller once enough brokers registered). When this broker's replica of an offsets
//! partition becomes leader, its groups' committed offsets are loaded from the
//! partition's committed log before any group request is served (until then
//! COORDINATOR_LOAD_IN_PROGRESS); when it stops leading, its groups are dropped and
//! their requests answered NOT_COORDINATOR, so clients rediscover the coordinator.
//! Offsets written by the old leader were committed (acks=all) before they were
//! acknowledged, so the new leader's log holds them: no failover loses or rewinds one.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use crate::api::{Reply, respond};
use crate::errors as code;
use crate::group::{OFFSETS_PARTITIONS, OFFSETS_TOPIC, offsets_partition};
use crate::shard::Shard;
use crate::topics::owner_shard;

use code::{COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR};

/// Where this broker stands with one offsets partition it owns a replica of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordinating {
    /// Leader; reading the partition's committed offsets (the load numbered `token`).
    Loading { token: u64 },
    /// Leader in this epoch, offsets loaded: serving its groups.
    Ready { epoch: i32 },
}

impl Shard {
    /// Whether this broker coordinates `group` now: Ok, or the error to answer.
    pub fn coordinator_ready(&self, group: &str) -> Result<(), i16> {
        if self.cluster.is_none() {
            return Ok(());
        }
        match self.coordinating.borrow().get(&offsets_partition(group)) {
            Some(Coordinating::Ready { .. }) => Ok(()),
            Some(Coordinating::Loading { .. }) => Err(COORDINATOR_LOAD_IN_PROGRESS),
            None => Err(NOT_COORDINATOR),
        }
    }

    /// The broker (id, host, port) coordinating `key`'s group, as this broker knows.
    pub fn coordinator_of(&self, key: &str) -> Option<(i32, String, i32)> {
        let p = offsets_partition(key);
        // The leader this broker's replica sees, or (none here) the one announced.
        let at = crate::handlers::placement(self, OFFSETS_TOPIC, p);
        if at.leader < 0 {
            return None;
        }
        let leader = at.leader;
        crate::handlers::brokers(self, 0)
            .into_iter()
            .find(|b| b.0 == leader)
    }

    /// Follows the leadership of the offsets partitions this shard owns (called on the
    /// group clock): loads a partition's groups when its replica here becomes leader,
    /// drops them when it stops.
    pub fn watch_coordination(self: &Rc<Self>) {
        if self.cluster.is_none() {
            return;
        }
        for p in 0..OFFSETS_PARTITIONS {
            if owner_shard(OFFSETS_TOPIC, p, self.count) != self.id {
                continue;
            }
            let leading = self
                .handle(OFFSETS_TOPIC, p)
                .map(|h| h.status.get())
                .is_some_and(|s| s.online && s.is_leader);
            let epoch = self
                .views
                .borrow()
                .get(&(OFFSETS_TOPIC.to_string(), p))
                .map_or(-1, |v| v.epoch);
            let state = self.coordinating.borrow().get(&p).copied();
            match (leading, state) {
                (true, Some(Coordinating::Ready { epoch: e })) if e == epoch => {}
                (true, Some(Coordinating::Loading { .. })) => {}
                (true, _) => {
                    self.drop_groups_of(p);
                    let token = self.next_load.get() + 1;
                    self.next_load.set(token);
                    self.coordinating
                        .borrow_mut()
                        .insert(p, Coordinating::Loading { token });
                    let shard = self.clone();
                    glommio::spawn_local(async move {
                        let r = shard.read_offsets_partition(p).await;
                        // Only this load's outcome counts, and only while still leading in
                        // that epoch: leadership may have moved while it read.
                        let current = shard.coordinating.borrow().get(&p).copied();
                        if current != Some(Coordinating::Loading { token }) {
                            return;
                        }
                        let still = shard
                            .handle(OFFSETS_TOPIC, p)
                            .map(|h| h.status.get())
                            .is_some_and(|s| s.online && s.is_leader)
                            && shard
                                .views
                                .borrow()
                                .get(&(OFFSETS_TOPIC.to_string(), p))
                                .is_some_and(|v| v.epoch == epoch);
                        match r {
                            Ok(()) if still => {
                                tracing::info!(partition = p, epoch, "coordinating the groups of this offsets partition");
                                shard
                                    .coordinating
                                    .borrow_mut()
                                    .insert(p, Coordinating::Ready { epoch });
                            }
                            Ok(()) => {
                                shard.coordinating.borrow_mut().remove(&p);
                                shard.drop_groups_of(p);
                            }
                            Err(e) => {
                                tracing::warn!(partition = p, error = %e, "loading committed offsets failed; retrying");
                                shard.coordinating.borrow_mut().remove(&p);
                                shard.drop_groups_of(p);
                            }
                        }
                    })
                    .detach();
                }
                (false, Some(_)) => {
                    tracing::info!(
                        partition = p,
                        "no longer coordinating this offsets partition's groups"
                    );
                    self.coordinating.borrow_mut().remove(&p);
                    self.drop_groups_of(p);
                }
                (false, None) => {}
            }
        }
    }

    /// Forgets the groups of offsets partition `p` (their waiting members are answered
    /// as their requests' futures drop).
    fn drop_groups_of(&self, p: i32) {
        self.groups
            .borrow_mut()
            .retain(|id, _| offsets_partition(id) != p);
    }
}

fn decode<R: Decodable>(body: &Bytes, version: i16) -> Result<R, String> {
    R::decode(&mut body.clone(), version).map_err(|e| format!("malformed request body: {e:#}"))
}

/// The answer of a group request refused with `error` (NOT_COORDINATOR or
/// COORDINATOR_LOAD_IN_PROGRESS), in the shape of its API.
pub fn refused(key: ApiKey, version: i16, c: i32, body: &Bytes, error: i16) -> Reply {
    match key {
        ApiKey::JoinGroup => {
            let req: JoinGroupRequest = decode(body, version)?;
            let mut resp = JoinGroupResponse::default()
                .with_error_code(error)
                .with_generation_id(-1)
                .with_member_id(req.member_id);
            resp.protocol_name = Some(Default::default());
            respond(c, version, &resp)
        }
        ApiKey::SyncGroup => respond(
            c,
            version,
            &SyncGroupResponse::default().with_error_code(error),
        ),
        ApiKey::Heartbeat => respond(
            c,
            version,
            &HeartbeatResponse::default().with_error_code(error),
        ),
        ApiKey::LeaveGroup => respond(
            c,
            version,
            &LeaveGroupResponse::default().with_error_code(error),
        ),
        ApiKey::OffsetCommit => {
            let req: OffsetCommitRequest = decode(body, version)?;
            let resp = OffsetCommitResponse::default().with_topics(
                req.topics
                    .iter()
                    .map(|t| {
                        OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(error)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            respond(c, version, &resp)
        }
        ApiKey::OffsetFetch => {
            let req: OffsetFetchRequest = decode(body, version)?;
            let mut resp = OffsetFetchResponse::default().with_error_code(error);
            resp.topics = req
                .topics
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    OffsetFetchResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partition_indexes
                                .iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(*p)
                                        .with_committed_offset(-1)
                                        .with_error_code(error)
                                })
                                .collect(),
                        )
                })
                .collect();
            respond(c, version, &resp)
        }
        ApiKey::OffsetDelete => respond(
            c,
            version,
            &OffsetDeleteResponse::default().with_error_code(error),
        ),
        other => Err(format!("{other:?} is not a group request")),
    }
}

/// What `corelog` tells Kafka clients about a refused coordinator lookup.
pub fn no_coordinator() -> (i16, &'static str) {
    (
        code::COORDINATOR_NOT_AVAILABLE,
        "the group's offsets partition has no leader yet",
    )
}
