//! The group coordinator's Kafka APIs and where they run. A request naming one group is
//! forwarded, undecoded, to the shard that owns the group (the owner of its offsets
//! partition) and decoded and answered there; ListGroups, DescribeGroups and DeleteGroups
//! fan out to the owners and merge.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use corelog_storage::batch::{self, BatchHeader};
use futures::channel::oneshot;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::acl;
use crate::api::{Reply, respond};
use crate::errors as code;
use crate::group::{
    Committed, Group, JoinOutcome, JoinRequest, Joined, OFFSETS_PARTITIONS, OFFSETS_TOPIC, State,
    SyncOutcome, Synced, metadata_too_large, offset_record, offsets_partition, parse_offset_record,
};
use crate::partition::Cmd;
use crate::shard::Shard;
use crate::topics::owner_shard;
use crate::util::wall_ms;

/// Who sent a request (JoinGroup records it; DescribeGroups shows it). Built for every
/// request, so it copies nothing: the id is a slice of the request buffer, the host is
/// formatted once per connection.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub client_id: Option<kafka_protocol::protocol::StrBytes>,
    pub host: std::sync::Arc<str>,
    /// Which of the broker's listeners it came in through (what Metadata advertises).
    pub listener: usize,
    /// Who it is, for ACLs (`User:NAME`).
    pub principal: std::sync::Arc<str>,
}

impl Client {
    /// Its IP address as ACL hosts name it (`host` without Kafka's leading `/`).
    pub fn ip(&self) -> &str {
        self.host.strip_prefix('/').unwrap_or(&self.host)
    }
}

pub enum GroupOp {
    /// A request for one group, forwarded as received.
    Request {
        key: ApiKey,
        version: i16,
        correlation_id: i32,
        body: Bytes,
        client: Client,
    },
    Describe(String),
    List,
    Delete(String),
}

pub enum GroupReply {
    Response(Reply),
    Described(DescribedGroup),
    Listed(Vec<ListedGroup>),
    Deleted(i16),
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn decode<R: Decodable>(body: &mut Bytes, version: i16) -> Result<R, String> {
    R::decode(body, version).map_err(|e| format!("malformed request body: {e:#}"))
}

/// The group id a single-group request names, read without keeping the decode.
fn group_of(key: ApiKey, version: i16, body: &Bytes) -> Result<String, String> {
    let b = &mut body.clone();
    Ok(match key {
        ApiKey::JoinGroup => decode::<JoinGroupRequest>(b, version)?
            .group_id
            .0
            .to_string(),
        ApiKey::SyncGroup => decode::<SyncGroupRequest>(b, version)?
            .group_id
            .0
            .to_string(),
        ApiKey::Heartbeat => decode::<HeartbeatRequest>(b, version)?
            .group_id
            .0
            .to_string(),
        ApiKey::LeaveGroup => decode::<LeaveGroupRequest>(b, version)?
            .group_id
            .0
            .to_string(),
        ApiKey::OffsetCommit => decode::<OffsetCommitRequest>(b, version)?
            .group_id
            .0
            .to_string(),
        ApiKey::OffsetFetch => decode::<OffsetFetchRequest>(b, version)?
            .group_id
            .0
            .to_string(),
        ApiKey::OffsetDelete => decode::<OffsetDeleteRequest>(b, version)?
            .group_id
            .0
            .to_string(),
        other => return Err(format!("{other:?} is not a group request")),
    })
}

impl Shard {
    pub fn group_owner(&self, group: &str) -> usize {
        owner_shard(OFFSETS_TOPIC, offsets_partition(group), self.count)
    }

    /// Runs a group operation on the group's owner (here, or over the mesh).
    async fn group_op(self: &Rc<Self>, owner: usize, op: GroupOp) -> Option<GroupReply> {
        if owner == self.id {
            return Some(self.clone().local_group_op(op).await);
        }
        let (tx, rx) = oneshot::channel();
        self.forward(owner, crate::shard::ShardMsg::Group { op, reply: tx })
            .await;
        rx.await.ok()
    }

    pub async fn local_group_op(self: Rc<Self>, op: GroupOp) -> GroupReply {
        match op {
            GroupOp::Request {
                key,
                version,
                correlation_id,
                body,
                client,
            } => GroupReply::Response(
                self.group_request(key, version, correlation_id, body, client)
                    .await,
            ),
            GroupOp::Describe(g) => GroupReply::Described(self.describe_group(&g)),
            GroupOp::List => GroupReply::Listed(self.list_local_groups()),
            GroupOp::Delete(g) => GroupReply::Deleted(self.delete_group(&g).await),
        }
    }

    /// Entry point from a connection for the group APIs.
    pub async fn group_api(
        self: &Rc<Self>,
        key: ApiKey,
        version: i16,
        correlation_id: i32,
        body: Bytes,
        client: Client,
    ) -> Reply {
        match key {
            ApiKey::FindCoordinator => {
                self.find_coordinator(correlation_id, version, body, &client)
            }
            ApiKey::ListGroups => {
                let req: ListGroupsRequest = decode(&mut body.clone(), version)?;
                let mut groups = Vec::new();
                for owner in 0..self.count {
                    if let Some(GroupReply::Listed(g)) = self.group_op(owner, GroupOp::List).await {
                        groups.extend(g);
                    }
                }
                let filter: Vec<String> =
                    req.states_filter.iter().map(|s| s.to_lowercase()).collect();
                groups.retain(|g| {
                    filter.is_empty() || filter.contains(&g.group_state.to_lowercase())
                });
                // Describe on the cluster lists every group; otherwise those the client
                // may Describe.
                if !self.allowed_cluster(&client, acl::op::DESCRIBE) {
                    groups.retain(|g| {
                        self.allowed(
                            &client,
                            acl::op::DESCRIBE,
                            acl::resource::GROUP,
                            &g.group_id,
                        )
                    });
                }
                let resp = ListGroupsResponse::default().with_groups(groups);
                respond(correlation_id, version, &resp)
            }
            ApiKey::DescribeGroups => {
                let req: DescribeGroupsRequest = decode(&mut body.clone(), version)?;
                let mut out = Vec::new();
                for g in req.groups {
                    let id = g.0.to_string();
                    if !self.allowed(&client, acl::op::DESCRIBE, acl::resource::GROUP, &id) {
                        out.push(
                            DescribedGroup::default()
                                .with_group_id(g)
                                .with_error_code(code::GROUP_AUTHORIZATION_FAILED),
                        );
                        continue;
                    }
                    let owner = self.group_owner(&id);
                    match self.group_op(owner, GroupOp::Describe(id.clone())).await {
                        Some(GroupReply::Described(d)) => out.push(d),
                        _ => out.push(
                            DescribedGroup::default()
                                .with_group_id(g)
                                .with_error_code(code::COORDINATOR_NOT_AVAILABLE),
                        ),
                    }
                }
                respond(
                    correlation_id,
                    version,
                    &DescribeGroupsResponse::default().with_groups(out),
                )
            }
            ApiKey::DeleteGroups => {
                let req: DeleteGroupsRequest = decode(&mut body.clone(), version)?;
                let mut out = Vec::new();
                for g in req.groups_names {
                    let id = g.0.to_string();
                    let owner = self.group_owner(&id);
                    let error =
                        if !self.allowed(&client, acl::op::DELETE, acl::resource::GROUP, &id) {
                            code::GROUP_AUTHORIZATION_FAILED
                        } else {
                            match self.group_op(owner, GroupOp::Delete(id)).await {
                                Some(GroupReply::Deleted(e)) => e,
                                _ => code::COORDINATOR_NOT_AVAILABLE,
                            }
                        };
                    out.push(
                        DeletableGroupResult::default()
                            .with_group_id(g)
                            .with_error_code(error),
                    );
                }
                respond(
                    correlation_id,
                    version,
                    &DeleteGroupsResponse::default().with_results(out),
                )
            }
            _ => {
                let group = group_of(key, version, &body)?;
                let operation = match key {
                    ApiKey::OffsetFetch => acl::op::DESCRIBE,
                    ApiKey::OffsetDelete => acl::op::DELETE,
                    _ => acl::op::READ,
                };
                if !self.allowed(&client, operation, acl::resource::GROUP, &group) {
                    return crate::cluster::groups::refused(
                        key,
                        version,
                        correlation_id,
                        &body,
                        code::GROUP_AUTHORIZATION_FAILED,
                    );
                }
                let owner = self.group_owner(&group);
                let op = GroupOp::Request {
                    key,
                    version,
                    correlation_id,
                    body,
                    client,
                };
                match self.group_op(owner, op).await {
                    Some(GroupReply::Response(r)) => r,
                    _ => Err("the group's shard did not answer".into()),
                }
            }
        }
    }

    fn find_coordinator(
        &self,
        correlation_id: i32,
        version: i16,
        mut body: Bytes,
        client: &Client,
    ) -> Reply {
        let listener = client.listener;
        let req: FindCoordinatorRequest = decode(&mut body, version)?;
        let keys: Vec<String> = if version >= 4 {
            req.coordinator_keys.iter().map(|k| k.to_string()).collect()
        } else {
            vec![req.key.to_string()]
        };
        if req.key_type == 0
            && keys
                .iter()
                .any(|k| !self.allowed(client, acl::op::DESCRIBE, acl::resource::GROUP, k))
        {
            // Every key answered: the denied ones GROUP_AUTHORIZATION_FAILED, the rest
            // COORDINATOR_NOT_AVAILABLE (retriable), so a mixed batch is asked again.
            let mut resp = FindCoordinatorResponse::default();
            if version < 4 {
                resp = resp
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(code::GROUP_AUTHORIZATION_FAILED);
                return respond(correlation_id, version, &resp);
            }
            resp.coordinators = keys
                .iter()
                .map(|k| {
                    let denied = !self.allowed(client, acl::op::DESCRIBE, acl::resource::GROUP, k);
                    Coordinator::default()
                        .with_key(s(k.clone()))
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(if denied {
                            code::GROUP_AUTHORIZATION_FAILED
                        } else {
                            code::COORDINATOR_NOT_AVAILABLE
                        })
                })
                .collect();
            return respond(correlation_id, version, &resp);
        }
        if self.cluster.is_some() && req.key_type == 0 {
            return self.find_cluster_coordinator(correlation_id, version, req);
        }
        let (host, port) = self.cfg.advertised_for(listener);
        let node = self.cfg.node_id;
        let mut resp = FindCoordinatorResponse::default();
        // Transactions do not exist here: only group coordinators (key type 0). A
        // transaction coordinator lookup gets a non-retriable error (a retriable one made
        // transactional clients retry until their timeout), with a message saying why.
        let error = if req.key_type == 0 {
            code::NONE
        } else {
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        };
        let why = "transactions are not supported by corelog yet";
        if version >= 4 {
            resp.coordinators = req
                .coordinator_keys
                .iter()
                .map(|k| {
                    Coordinator::default()
                        .with_key(k.clone())
                        .with_node_id(BrokerId(if error == 0 { node } else { -1 }))
                        .with_host(s(if error == 0 {
                            host.clone()
                        } else {
                            String::new()
                        }))
                        .with_port(if error == 0 { port } else { -1 })
                        .with_error_code(error)
                        .with_error_message((error != 0).then(|| s(why)))
                })
                .collect();
        } else {
            resp.error_code = error;
            if error == 0 {
                resp.node_id = BrokerId(node);
                resp.host = s(host);
                resp.port = port;
            } else {
                resp.node_id = BrokerId(-1);
                resp.port = -1;
                resp.error_message = Some(s(why));
            }
        }
        respond(correlation_id, version, &resp)
    }

    /// FindCoordinator on a cluster: the leader of each key's offsets partition.
    fn find_cluster_coordinator(
        &self,
        correlation_id: i32,
        version: i16,
        req: FindCoordinatorRequest,
    ) -> Reply {
        let keys: Vec<String> = if version >= 4 {
            req.coordinator_keys.iter().map(|k| k.to_string()).collect()
        } else {
            vec![req.key.to_string()]
        };
        type Found<'a> = (String, Result<(i32, String, i32), (i16, &'a str)>);
        let found: Vec<Found<'_>> = keys
            .into_iter()
            .map(|k| {
                let at = self
                    .coordinator_of(&k)
                    .ok_or_else(crate::cluster::groups::no_coordinator);
                (k, at)
            })
            .collect();
        let mut resp = FindCoordinatorResponse::default();
        if version >= 4 {
            resp.coordinators = found
                .into_iter()
                .map(|(k, at)| match at {
                    Ok((node, host, port)) => Coordinator::default()
                        .with_key(s(k))
                        .with_node_id(BrokerId(node))
                        .with_host(s(host))
                        .with_port(port),
                    Err((e, why)) => Coordinator::default()
                        .with_key(s(k))
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(e)
                        .with_error_message(Some(s(why))),
                })
                .collect();
        } else {
            match found.into_iter().next().map(|(_, at)| at) {
                Some(Ok((node, host, port))) => {
                    resp.node_id = BrokerId(node);
                    resp.host = s(host);
                    resp.port = port;
                }
                Some(Err((e, why))) => {
                    resp.error_code = e;
                    resp.node_id = BrokerId(-1);
                    resp.port = -1;
                    resp.error_message = Some(s(why));
                }
                None => {}
            }
        }
        respond(correlation_id, version, &resp)
    }

    async fn group_request(
        self: &Rc<Self>,
        key: ApiKey,
        version: i16,
        c: i32,
        mut body: Bytes,
        client: Client,
    ) -> Reply {
        if self.cluster.is_some() {
            if let Err(e) = self.coordinator_ready(&group_of(key, version, &body)?) {
                return crate::cluster::groups::refused(key, version, c, &body, e);
            }
        }
        let now = Instant::now();
        match key {
            ApiKey::JoinGroup => {
                let req: JoinGroupRequest = decode(&mut body, version)?;
                let group = req.group_id.0.to_string();
                let outcome = if group.is_empty() {
                    JoinOutcome {
                        error: 24, // INVALID_GROUP_ID
                        generation: -1,
                        ..Default::default()
                    }
                } else {
                    let jr = JoinRequest {
                        member_id: req.member_id.to_string(),
                        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
                        client_id: client.client_id.as_deref().unwrap_or_default().to_string(),
                        client_host: client.host.to_string(),
                        session_timeout_ms: req.session_timeout_ms,
                        rebalance_timeout_ms: if version >= 1 {
                            req.rebalance_timeout_ms
                        } else {
                            req.session_timeout_ms
                        },
                        protocol_type: req.protocol_type.to_string(),
                        protocols: req
                            .protocols
                            .iter()
                            .map(|p| (p.name.to_string(), p.metadata.clone()))
                            .collect(),
                        require_known_member_id: version >= 4,
                    };
                    let joined = {
                        let mut groups = self.groups.borrow_mut();
                        let g = groups
                            .entry(group.clone())
                            .or_insert_with(|| Group::new(&group));
                        g.join(jr, now)
                    };
                    match joined {
                        Joined::Now(o) => o,
                        Joined::Wait(rx) => rx.await.unwrap_or(JoinOutcome {
                            error: 27, // superseded by a newer join of the same member
                            generation: -1,
                            member_id: req.member_id.to_string(),
                            ..Default::default()
                        }),
                    }
                };
                let mut resp = JoinGroupResponse::default()
                    .with_error_code(outcome.error)
                    .with_generation_id(outcome.generation)
                    .with_leader(s(outcome.leader))
                    .with_member_id(s(outcome.member_id))
                    .with_members(
                        outcome
                            .members
                            .into_iter()
                            .map(|(id, instance, metadata)| {
                                JoinGroupResponseMember::default()
                                    .with_member_id(s(id))
                                    .with_group_instance_id(if version >= 5 {
                                        instance.map(s)
                                    } else {
                                        None
                                    })
                                    .with_metadata(metadata)
                            })
                            .collect(),
                    );
                resp.protocol_name = Some(s(outcome.protocol.unwrap_or_default()));
                if version >= 7 {
                    resp.protocol_type = outcome.protocol_type.map(s);
                }
                respond(c, version, &resp)
            }
            ApiKey::SyncGroup => {
                let req: SyncGroupRequest = decode(&mut body, version)?;
                let group = req.group_id.0.to_string();
                let synced = {
                    let mut groups = self.groups.borrow_mut();
                    match groups.get_mut(&group) {
                        None => Synced::Now(SyncOutcome {
                            error: 25,
                            ..Default::default()
                        }),
                        Some(g) => g.sync(
                            req.member_id.as_str(),
                            req.group_instance_id.as_deref(),
                            req.generation_id,
                            req.assignments
                                .iter()
                                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                                .collect(),
                            now,
                        ),
                    }
                };
                let outcome = match synced {
                    Synced::Now(o) => o,
                    Synced::Wait(rx) => rx.await.unwrap_or(SyncOutcome {
                        error: 27,
                        ..Default::default()
                    }),
                };
                let mut resp = SyncGroupResponse::default()
                    .with_error_code(outcome.error)
                    .with_assignment(outcome.assignment);
                if version >= 5 {
                    resp.protocol_type = outcome.protocol_type.map(s);
                    resp.protocol_name = outcome.protocol.map(s);
                }
                respond(c, version, &resp)
            }
            ApiKey::Heartbeat => {
                let req: HeartbeatRequest = decode(&mut body, version)?;
                let error = match self.groups.borrow_mut().get_mut(req.group_id.0.as_str()) {
                    None => 25,
                    Some(g) => g.heartbeat(
                        req.member_id.as_str(),
                        req.group_instance_id.as_deref(),
                        req.generation_id,
                        now,
                    ),
                };
                respond(
                    c,
                    version,
                    &HeartbeatResponse::default().with_error_code(error),
                )
            }
            ApiKey::LeaveGroup => {
                let req: LeaveGroupRequest = decode(&mut body, version)?;
                let leaving: Vec<(String, Option<String>)> = if version >= 3 {
                    req.members
                        .iter()
                        .map(|m| {
                            (
                                m.member_id.to_string(),
                                m.group_instance_id.as_ref().map(|s| s.to_string()),
                            )
                        })
                        .collect()
                } else {
                    vec![(req.member_id.to_string(), None)]
                };
                let mut groups = self.groups.borrow_mut();
                let g = groups.get_mut(req.group_id.0.as_str());
                let results: Vec<(String, Option<String>, i16)> = match g {
                    None => leaving.into_iter().map(|(m, i)| (m, i, 25)).collect(),
                    Some(g) => leaving
                        .into_iter()
                        .map(|(m, i)| {
                            let e = g.leave(&m, i.as_deref(), now);
                            (m, i, e)
                        })
                        .collect(),
                };
                drop(groups);
                let mut resp = LeaveGroupResponse::default();
                if version >= 3 {
                    resp.members = results
                        .into_iter()
                        .map(|(m, i, e)| {
                            MemberResponse::default()
                                .with_member_id(s(m))
                                .with_group_instance_id(i.map(s))
                                .with_error_code(e)
                        })
                        .collect();
                } else {
                    resp.error_code = results.first().map_or(code::NONE, |r| r.2);
                }
                respond(c, version, &resp)
            }
            ApiKey::OffsetCommit => {
                self.offset_commit(c, version, decode(&mut body, version)?, &client)
                    .await
            }
            ApiKey::OffsetFetch => {
                self.offset_fetch(c, version, decode(&mut body, version)?, &client)
            }
            ApiKey::OffsetDelete => {
                self.offset_delete(c, version, decode(&mut body, version)?)
                    .await
            }
            other => Err(format!("{other:?} is not a group request")),
        }
    }

    async fn offset_commit(
        self: &Rc<Self>,
        c: i32,
        version: i16,
        req: OffsetCommitRequest,
        client: &Client,
    ) -> Reply {
        let group = req.group_id.0.to_string();
        let generation = req.generation_id_or_member_epoch;
        let member = req.member_id.to_string();
        // Group-level check, answered for every partition.
        let group_error = {
            let groups = self.groups.borrow();
            match groups.get(&group) {
                _ if group.is_empty() => 24,
                None if generation < 0 => code::NONE,
                None => 25,
                Some(g) if generation < 0 && g.members.is_empty() => code::NONE,
                Some(_) if generation < 0 => 25,
                Some(g) => g.check_commit(&member, req.group_instance_id.as_deref(), generation),
            }
        };
        let now_ms = wall_ms();
        let mut results: Vec<(String, i32, i16)> = Vec::new();
        let mut to_write: Vec<((String, i32), Option<Committed>)> = Vec::new();
        for t in &req.topics {
            let topic = t.name.0.to_string();
            let meta = self.topic(&topic);
            let authorized = self.allowed(client, acl::op::READ, acl::resource::TOPIC, &topic);
            for p in &t.partitions {
                let metadata = p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let error = if group_error != code::NONE {
                    group_error
                } else if !authorized {
                    code::TOPIC_AUTHORIZATION_FAILED
                } else if !meta
                    .as_ref()
                    .is_some_and(|m| (0..m.partitions).contains(&p.partition_index))
                {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                } else if metadata_too_large(&metadata) {
                    12 // OFFSET_METADATA_TOO_LARGE
                } else {
                    to_write.push((
                        (topic.clone(), p.partition_index),
                        Some(Committed {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata,
                            commit_ms: now_ms,
                        }),
                    ));
                    code::NONE
                };
                results.push((topic.clone(), p.partition_index, error));
            }
        }
        if !to_write.is_empty() {
            let error = self.write_offsets(&group, to_write).await;
            if error != code::NONE {
                for r in results.iter_mut().filter(|r| r.2 == code::NONE) {
                    r.2 = error;
                }
            }
        }
        let mut resp = OffsetCommitResponse::default();
        for (topic, p, error) in results {
            let part = OffsetCommitResponsePartition::default()
                .with_partition_index(p)
                .with_error_code(error);
            match resp.topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partitions.push(part),
                None => resp.topics.push(
                    OffsetCommitResponseTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(vec![part]),
                ),
            }
        }
        respond(c, version, &resp)
    }

    /// Writes offset records (None = deletion) durably, then applies them to the group
    /// in memory, then compacts the offsets partition if it has grown enough.
    async fn write_offsets(
        &self,
        group: &str,
        entries: Vec<((String, i32), Option<Committed>)>,
    ) -> i16 {
        self.commits_in_flight.set(self.commits_in_flight.get() + 1);
        let error = self.persist_offsets(group, &entries).await;
        if error == code::NONE {
            let mut groups = self.groups.borrow_mut();
            let g = groups
                .entry(group.to_string())
                .or_insert_with(|| Group::new(group));
            for (k, v) in entries {
                match v {
                    Some(v) => g.offsets.insert(k, v),
                    None => g.offsets.remove(&k),
                };
            }
        }
        self.commits_in_flight.set(self.commits_in_flight.get() - 1);
        if error == code::NONE {
            self.maybe_compact(offsets_partition(group)).await;
        }
        error
    }

    /// Compaction of an offsets partition: once it holds `offsets_compact_bytes`, the
    /// latest offset of every group in it is written again as a snapshot and every whole
    /// segment before the snapshot is dropped. Only when no commit is between its write
    /// and its application, so the snapshot holds everything the dropped records said.
    async fn maybe_compact(&self, p: i32) {
        let Some(h) = self.handle(OFFSETS_TOPIC, p) else {
            return;
        };
        let status = h.status.get();
        let threshold = self
            .compact_at
            .borrow()
            .get(&p)
            .copied()
            .unwrap_or(self.cfg.offsets_compact_bytes);
        if status.size_bytes < threshold || self.commits_in_flight.get() > 0 {
            return;
        }
        // Raise the bar first so commits meanwhile do not start a second pass.
        self.compact_at.borrow_mut().insert(p, u64::MAX);
        let snapshot_start = status.high_watermark as u64;
        #[allow(clippy::type_complexity)]
        let live: Vec<(String, Vec<((String, i32), Option<Committed>)>)> = self
            .groups
            .borrow()
            .values()
            .filter(|g| offsets_partition(&g.id) == p && !g.offsets.is_empty())
            .map(|g| {
                let entries = g
                    .offsets
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                    .collect();
                (g.id.clone(), entries)
            })
            .collect();
        let mut ok = true;
        for (group, entries) in &live {
            ok &= self.persist_offsets(group, entries).await == code::NONE;
        }
        if ok {
            let (tx, rx) = oneshot::channel();
            h.send(Cmd::DeleteBefore {
                offset: snapshot_start,
                reply: tx,
            })
            .await;
            match rx.await {
                Ok(Ok(n)) => {
                    tracing::info!(partition = p, segments = n, "compacted consumer offsets")
                }
                Ok(Err(e)) => {
                    tracing::warn!(partition = p, error = %e, "offsets compaction failed")
                }
                Err(_) => {}
            }
        }
        let size = h.status.get().size_bytes;
        self.compact_at.borrow_mut().insert(
            p,
            self.cfg.offsets_compact_bytes.max(size.saturating_mul(2)),
        );
    }

    /// Writes offset records (None = deletion) to the group's offsets partition and waits
    /// until they are durable.
    async fn persist_offsets(
        &self,
        group: &str,
        entries: &[((String, i32), Option<Committed>)],
    ) -> i16 {
        for chunk in entries.chunks(500) {
            let records: Vec<(Vec<u8>, Vec<u8>)> = chunk
                .iter()
                .map(|((t, p), c)| offset_record(group, t, *p, c.as_ref()))
                .collect();
            let refs: Vec<(Option<&[u8]>, &[u8])> = records
                .iter()
                .map(|(k, v)| (Some(k.as_slice()), v.as_slice()))
                .collect();
            let bytes = batch::build::with_records(&refs, wall_ms(), 0);
            let out = self
                .produce(
                    OFFSETS_TOPIC,
                    offsets_partition(group),
                    Some(Bytes::from(bytes)),
                    -1,
                )
                .await;
            if out.error != code::NONE {
                tracing::error!(group, error = out.error, message = ?out.message, "offset commit not stored");
                // The offsets partition moved: so did the group's coordinator.
                if out.error == code::NOT_LEADER_OR_FOLLOWER {
                    return code::NOT_COORDINATOR;
                }
                return out.error;
            }
        }
        code::NONE
    }

    fn offset_fetch(
        &self,
        c: i32,
        version: i16,
        req: OffsetFetchRequest,
        client: &Client,
    ) -> Reply {
        let may = |t: &str| self.allowed(client, acl::op::DESCRIBE, acl::resource::TOPIC, t);
        let group = req.group_id.0.to_string();
        let groups = self.groups.borrow();
        let g = groups.get(&group);
        let wanted: Vec<(String, Vec<i32>)> = match &req.topics {
            Some(topics) => topics
                .iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                .collect(),
            None => {
                let mut all: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                if let Some(g) = g {
                    // Listing the group's offsets shows only topics the client may see.
                    for (t, p) in g.offsets.keys().filter(|(t, _)| may(t)) {
                        all.entry(t.clone()).or_default().push(*p);
                    }
                }
                all.into_iter().collect()
            }
        };
        let mut resp = OffsetFetchResponse::default();
        for (topic, parts) in wanted {
            let authorized = may(&topic);
            let partitions = parts
                .into_iter()
                .map(|p| {
                    let committed = g
                        .filter(|_| authorized)
                        .and_then(|g| g.offsets.get(&(topic.clone(), p)));
                    OffsetFetchResponsePartition::default()
                        .with_error_code(if authorized {
                            code::NONE
                        } else {
                            code::TOPIC_AUTHORIZATION_FAILED
                        })
                        .with_partition_index(p)
                        .with_committed_offset(committed.map_or(-1, |c| c.offset))
                        .with_committed_leader_epoch(committed.map_or(-1, |c| c.leader_epoch))
                        .with_metadata(Some(s(committed
                            .map(|c| c.metadata.clone())
                            .unwrap_or_default())))
                })
                .collect();
            resp.topics.push(
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(partitions),
            );
        }
        respond(c, version, &resp)
    }

    async fn offset_delete(
        self: &Rc<Self>,
        c: i32,
        version: i16,
        req: OffsetDeleteRequest,
    ) -> Reply {
        let group = req.group_id.0.to_string();
        let (exists, subscribed) = {
            let groups = self.groups.borrow();
            match groups.get(&group) {
                None => (false, Vec::new()),
                Some(g) => (true, g.subscribed_topics()),
            }
        };
        let mut resp = OffsetDeleteResponse::default();
        if !exists {
            resp.error_code = 69; // GROUP_ID_NOT_FOUND
            return respond(c, version, &resp);
        }
        let mut to_delete = Vec::new();
        for t in &req.topics {
            let topic = t.name.0.to_string();
            let mut parts = Vec::new();
            for p in &t.partitions {
                let error = if subscribed.contains(&topic) {
                    86 // GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    to_delete.push(((topic.clone(), p.partition_index), None));
                    code::NONE
                };
                parts.push(
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error),
                );
            }
            resp.topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(parts),
            );
        }
        if !to_delete.is_empty() {
            let error = self.write_offsets(&group, to_delete).await;
            if error != code::NONE {
                resp.error_code = error;
            }
        }
        respond(c, version, &resp)
    }

    fn describe_group(&self, id: &str) -> DescribedGroup {
        let groups = self.groups.borrow();
        let mut d = DescribedGroup::default().with_group_id(GroupId(s(id)));
        if let Err(e) = self.coordinator_ready(id) {
            d.error_code = e;
            return d;
        }
        match groups.get(id) {
            None => d.group_state = s(State::Dead.name()),
            Some(g) => {
                d.group_state = s(g.state.name());
                d.protocol_type = s(g.protocol_type.clone().unwrap_or_default());
                d.protocol_data = s(g.protocol.clone().unwrap_or_default());
                let protocol = g.protocol.clone().unwrap_or_default();
                d.members = g
                    .members
                    .values()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(s(m.id.clone()))
                            .with_group_instance_id(m.instance_id.clone().map(s))
                            .with_client_id(s(m.client_id.clone()))
                            .with_client_host(s(m.client_host.clone()))
                            .with_member_metadata(m.metadata_for(&protocol))
                            .with_member_assignment(if g.state == State::Stable {
                                m.assignment.clone()
                            } else {
                                Bytes::new()
                            })
                    })
                    .collect();
            }
        }
        d
    }

    fn list_local_groups(&self) -> Vec<ListedGroup> {
        self.groups
            .borrow()
            .values()
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(GroupId(s(g.id.clone())))
                    .with_protocol_type(s(g
                        .protocol_type
                        .clone()
                        .unwrap_or_else(|| "consumer".into())))
                    .with_group_state(s(g.state.name()))
            })
            .collect()
    }

    async fn delete_group(&self, id: &str) -> i16 {
        if let Err(e) = self.coordinator_ready(id) {
            return e;
        }
        let offsets: Vec<(String, i32)> = {
            let groups = self.groups.borrow();
            match groups.get(id) {
                None => return 69,                             // GROUP_ID_NOT_FOUND
                Some(g) if !g.members.is_empty() => return 68, // NON_EMPTY_GROUP
                Some(g) => g.offsets.keys().cloned().collect(),
            }
        };
        let tombstones: Vec<((String, i32), Option<Committed>)> =
            offsets.into_iter().map(|k| (k, None)).collect();
        if !tombstones.is_empty() {
            let error = self.write_offsets(id, tombstones).await;
            if error != code::NONE {
                return error;
            }
        }
        let mut groups = self.groups.borrow_mut();
        if groups.get(id).is_some_and(|g| g.members.is_empty()) {
            groups.remove(id);
        }
        code::NONE
    }

    /// Opens the offsets partitions this shard owns and loads every committed offset in
    /// them (the latest record per key wins).
    pub async fn load_offsets(&self) -> Result<(), String> {
        for p in 0..OFFSETS_PARTITIONS {
            if owner_shard(OFFSETS_TOPIC, p, self.count) != self.id {
                continue;
            }
            self.open_internal_partition(OFFSETS_TOPIC, p).await?;
            self.read_offsets_partition(p).await?;
        }
        Ok(())
    }

    /// Reads every committed offset in offsets partition `p` (hosted here) into the
    /// groups (the latest record per key wins).
    pub async fn read_offsets_partition(&self, p: i32) -> Result<(), String> {
        {
            let h = self
                .handle(OFFSETS_TOPIC, p)
                .ok_or_else(|| format!("{OFFSETS_TOPIC}-{p} is not open here"))?;
            // Compaction may have dropped the oldest segments.
            let mut from = h.status.get().log_start;
            loop {
                let hw = h.status.get().high_watermark;
                if from >= hw {
                    break;
                }
                let (tx, rx) = oneshot::channel();
                h.send(Cmd::Fetch {
                    offset: from,
                    max_bytes: 4 << 20,
                    reply: tx,
                })
                .await;
                let out = rx
                    .await
                    .map_err(|_| "offsets partition closed".to_string())?;
                if out.error != code::NONE || out.records.is_empty() {
                    return Err(format!(
                        "cannot read {OFFSETS_TOPIC}-{p}: error {}",
                        out.error
                    ));
                }
                let records = out.records.to_bytes();
                let mut rest = &records[..];
                while let Ok(h) = BatchHeader::parse(rest) {
                    for r in batch::records(&rest[..h.size]).unwrap_or_default() {
                        let Some(key) = r.key else { continue };
                        if let Some(((group, topic, partition), committed)) =
                            parse_offset_record(key, r.value)
                        {
                            let mut groups = self.groups.borrow_mut();
                            let g = groups
                                .entry(group.clone())
                                .or_insert_with(|| Group::new(&group));
                            match committed {
                                Some(c) => {
                                    g.offsets.insert((topic, partition), c);
                                }
                                None => {
                                    g.offsets.remove(&(topic, partition));
                                }
                            }
                        }
                    }
                    from = h.last_offset() + 1;
                    rest = &rest[h.size..];
                }
            }
        }
        // Groups whose every offset was deleted are gone (none has members yet).
        self.groups.borrow_mut().retain(|id, g| {
            offsets_partition(id) != p || !g.offsets.is_empty() || !g.members.is_empty()
        });
        Ok(())
    }

    /// Time passes for every group on this shard.
    pub fn tick_groups(self: &Rc<Self>) {
        self.watch_coordination();
        let now = Instant::now();
        let mut groups = self.groups.borrow_mut();
        for g in groups.values_mut() {
            g.tick(now);
        }
        // Like Kafka, an empty group with no offsets is forgotten.
        groups.retain(|_, g| {
            !(g.state == State::Empty
                && g.members.is_empty()
                && g.offsets.is_empty()
                && !g.has_pending())
        });
    }
}
