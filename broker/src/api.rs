//! Kafka API handlers: decode a request body, do the work through the shard, encode the
//! response. Records stay `Bytes` sliced from the receive buffer all the way to storage.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use futures::future::join_all;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::acl;
use crate::config::topic_default;
use crate::errors as code;
use crate::frame::{Frame, Splicer};
use crate::observe::ErrorCodes;
use crate::partition::{Answer, Query};
use crate::shard::{AdminOp, AdminResult, Shard};
use crate::topic_configs::{self, TOPIC_CONFIGS};
use crate::topics::TopicMeta;

/// The versions corelog implements, advertised in ApiVersions. Produce v13+ and Fetch
/// v13+ address topics by id only; they stay out until clients can rely on topic ids
/// there.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    // v0: bare tokens follow the handshake; v1: inside SaslAuthenticate.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

pub fn supported(key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(k, lo, hi)| k == key && (lo..=hi).contains(&version))
}

pub type Reply = Result<Option<Frame>, String>;

fn decode<R: Decodable>(body: &mut Bytes, version: i16) -> Result<R, String> {
    R::decode(body, version).map_err(|e| format!("malformed request body: {e:#}"))
}

/// Frames a response: `[i32 length][header][body]`, in one buffer whose length prefix
/// is what was encoded (the size computed up front only sizes the buffer).
pub fn respond<R: Encodable + HeaderVersion + ErrorCodes>(
    correlation_id: i32,
    version: i16,
    resp: &R,
) -> Reply {
    crate::observe::response_codes(resp);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = R::header_version(version);
    let size = header
        .compute_size(header_version)
        .and_then(|h| Ok(h + resp.compute_size(version)?))
        .unwrap_or(64);
    let mut buf = bytes::BytesMut::with_capacity(4 + size);
    buf.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| format!("encoding response header: {e:#}"))?;
    resp.encode(&mut buf, version)
        .map_err(|e| format!("encoding response: {e:#}"))?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| "a response over 2 GiB".to_string())?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Some(Frame::one(buf.freeze())))
}

/// [`respond`], sending the records sections `splicer` holds by reference: the length
/// prefix goes first, so it is the computed size, checked against what was encoded.
pub fn respond_splicing<R: Encodable + HeaderVersion + ErrorCodes>(
    correlation_id: i32,
    version: i16,
    resp: &R,
    splicer: Splicer,
) -> Reply {
    crate::observe::response_codes(resp);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = R::header_version(version);
    // Sized up front: the length prefix goes first, and a fetch response of megabytes
    // would otherwise be copied again at every doubling of the buffer.
    let size = header
        .compute_size(header_version)
        .and_then(|h| Ok(h + resp.compute_size(version)?))
        .map_err(|e| format!("encoding response: {e:#}"))?;
    let prefix = i32::try_from(size).map_err(|_| format!("a response of {size} bytes"))?;
    let frame = splicer.encode(4 + size, |buf| {
        buf.put_i32(prefix);
        header
            .encode(buf, header_version)
            .map_err(|e| format!("encoding response header: {e:#}"))?;
        resp.encode(buf, version)
            .map_err(|e| format!("encoding response: {e:#}"))
    })?;
    if frame.len() != 4 + size {
        return Err(format!(
            "response encoded to {} bytes where {size} were computed",
            frame.len() - 4
        ));
    }
    Ok(Some(frame))
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn topic_name(v: &str) -> TopicName {
    TopicName(s(v))
}

fn uuid(id: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(id)
}

pub async fn dispatch(
    shard: &Rc<Shard>,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    mut body: Bytes,
    client: crate::coordinator::Client,
) -> Reply {
    let c = correlation_id;
    let b = &mut body;
    match key {
        ApiKey::FindCoordinator
        | ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::ListGroups
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups
        | ApiKey::OffsetDelete => {
            shard
                .group_api(key, version, correlation_id, body, client)
                .await
        }
        ApiKey::ApiVersions => api_versions(c, version),
        ApiKey::Metadata => metadata(shard, c, version, decode(b, version)?, &client).await,
        ApiKey::Produce => produce(shard, c, version, decode(b, version)?, &client).await,
        ApiKey::Fetch => fetch(shard, c, version, decode(b, version)?, &client).await,
        ApiKey::ListOffsets => list_offsets(shard, c, version, decode(b, version)?, &client).await,
        ApiKey::CreateTopics => {
            create_topics(shard, c, version, decode(b, version)?, &client).await
        }
        ApiKey::DeleteTopics => {
            delete_topics(shard, c, version, decode(b, version)?, &client).await
        }
        ApiKey::InitProducerId => {
            init_producer_id(shard, c, version, decode(b, version)?, &client).await
        }
        ApiKey::DescribeConfigs => {
            describe_configs(shard, c, version, decode(b, version)?, &client)
        }
        ApiKey::AlterConfigs => {
            alter_configs(shard, c, version, decode(b, version)?, &client).await
        }
        ApiKey::IncrementalAlterConfigs => {
            incremental_alter_configs(shard, c, version, decode(b, version)?, &client).await
        }
        ApiKey::DescribeCluster => describe_cluster(shard, c, version, &client),
        ApiKey::SaslHandshake | ApiKey::SaslAuthenticate => {
            crate::handlers::sasl::out_of_place(key, version, c)
        }
        ApiKey::CreatePartitions => {
            crate::handlers::create_partitions::handle(
                shard,
                c,
                version,
                decode(b, version)?,
                &client,
            )
            .await
        }
        ApiKey::DescribeLogDirs => crate::handlers::describe_log_dirs::handle(
            shard,
            c,
            version,
            decode(b, version)?,
            &client,
        ),
        ApiKey::DeleteRecords => {
            crate::handlers::delete_records::handle(shard, c, version, decode(b, version)?, &client)
                .await
        }
        ApiKey::DescribeProducers => {
            crate::handlers::describe_producers::handle(
                shard,
                c,
                version,
                decode(b, version)?,
                &client,
            )
            .await
        }
        ApiKey::OffsetForLeaderEpoch => {
            crate::handlers::offset_for_leader_epoch::handle(
                shard,
                c,
                version,
                decode(b, version)?,
                &client,
            )
            .await
        }
        ApiKey::DescribeTopicPartitions => crate::handlers::describe_topic_partitions::handle(
            shard,
            c,
            version,
            decode(b, version)?,
            &client,
        ),
        ApiKey::DescribeAcls => {
            crate::handlers::acls::describe(shard, c, version, decode(b, version)?, &client)
        }
        ApiKey::CreateAcls => {
            crate::handlers::acls::create(shard, c, version, decode(b, version)?, &client).await
        }
        ApiKey::DeleteAcls => {
            crate::handlers::acls::delete(shard, c, version, decode(b, version)?, &client).await
        }
        ApiKey::DescribeUserScramCredentials => {
            crate::handlers::scram::describe(shard, c, version, decode(b, version)?, &client)
        }
        ApiKey::AlterUserScramCredentials => {
            crate::handlers::scram::alter(shard, c, version, decode(b, version)?, &client).await
        }
        other => Err(format!("API {other:?} is not implemented")),
    }
}

/// ApiVersions, including the KIP-511 rule: a version newer than ours gets a v0 answer
/// with UNSUPPORTED_VERSION and our ranges, so the client can retry with one we know.
pub fn api_versions(correlation_id: i32, version: i16) -> Reply {
    let mut resp = ApiVersionsResponse::default();
    resp.api_keys = SUPPORTED
        .iter()
        .map(|&(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(lo)
                .with_max_version(hi)
        })
        .collect();
    if !supported(ApiKey::ApiVersions, version) {
        resp.error_code = code::UNSUPPORTED_VERSION;
        return respond(correlation_id, 0, &resp);
    }
    respond(correlation_id, version, &resp)
}

async fn metadata(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: MetadataRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = MetadataResponse::default();
    resp.brokers = crate::handlers::brokers(shard, client.listener)
        .into_iter()
        .map(|(node, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(node))
                .with_host(s(host))
                .with_port(port)
        })
        .collect();
    resp.cluster_id = Some(s(shard.cluster_id.borrow().clone()));
    resp.controller_id = BrokerId(crate::handlers::controller_id(shard));
    let all = match &req.topics {
        None => true,
        Some(t) => version == 0 && t.is_empty(),
    };
    let may_describe = |n: &str| shard.allowed(client, acl::op::DESCRIBE, acl::resource::TOPIC, n);
    let requested: Vec<(Option<String>, [u8; 16])> = if all {
        // All topics: those the client may Describe.
        shard
            .topics
            .borrow()
            .keys()
            .filter(|n| may_describe(n))
            .map(|n| (Some(n.clone()), [0; 16]))
            .collect()
    } else {
        req.topics
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), *t.topic_id.as_bytes()))
            .collect()
    };
    let auto_create =
        shard.cfg.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    for (name, id) in requested {
        let meta = match &name {
            Some(n) => shard.topic(n),
            None => shard.topics.borrow().values().find(|t| t.id == id).cloned(),
        };
        let meta = match (meta, name) {
            // Named as asked: a topic asked for by id is not named to who may not see it.
            (Some(m), n) if !may_describe(&m.name) => Err((code::TOPIC_AUTHORIZATION_FAILED, n)),
            (Some(m), _) => Ok(m),
            (None, None) => Err((code::UNKNOWN_TOPIC_ID, None)),
            (None, Some(n)) if !may_describe(&n) => {
                Err((code::TOPIC_AUTHORIZATION_FAILED, Some(n)))
            }
            (None, Some(n)) => {
                if let Err(e) = crate::topics::validate_topic_name(&n) {
                    tracing::debug!(topic = %n, "metadata for an invalid topic name: {e}");
                    Err((code::INVALID_TOPIC_EXCEPTION, Some(n)))
                } else if auto_create && shard.may_create_topic(client, &n) {
                    match shard
                        .admin(AdminOp::CreateTopic {
                            name: n.clone(),
                            partitions: shard.cfg.default_partitions,
                            replication_factor: -1,
                            configs: BTreeMap::new(),
                            validate_only: false,
                        })
                        .await
                    {
                        AdminResult::Ok(Some(m)) => {
                            tracing::info!(topic = %n, partitions = m.partitions, "auto-created topic");
                            Ok(m)
                        }
                        // Created by a concurrent request meanwhile.
                        _ => shard.topic(&n).ok_or((code::LEADER_NOT_AVAILABLE, Some(n))),
                    }
                } else {
                    Err((code::UNKNOWN_TOPIC_OR_PARTITION, Some(n)))
                }
            }
        };
        let topic = match meta {
            Ok(m) => MetadataResponseTopic::default()
                .with_name(Some(topic_name(&m.name)))
                .with_topic_id(uuid(m.id))
                .with_partitions(
                    (0..m.partitions)
                        .map(|p| {
                            let at = crate::handlers::placement(shard, &m.name, p);
                            MetadataResponsePartition::default()
                                .with_error_code(at.error)
                                .with_partition_index(p)
                                .with_leader_id(BrokerId(at.leader))
                                .with_leader_epoch(at.leader_epoch)
                                .with_replica_nodes(at.replicas.into_iter().map(BrokerId).collect())
                                .with_isr_nodes(at.isr.into_iter().map(BrokerId).collect())
                                .with_offline_replicas(
                                    at.offline.into_iter().map(BrokerId).collect(),
                                )
                        })
                        .collect(),
                ),
            Err((error, n)) => MetadataResponseTopic::default()
                .with_error_code(error)
                .with_name(n.map(|n| topic_name(&n))),
        };
        resp.topics.push(topic);
    }
    respond(c, version, &resp)
}

async fn produce(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: ProduceRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let acks = req.acks;
    let refuse_all = if req.transactional_id.is_some() {
        Some((
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactions are not supported by corelog".to_string(),
        ))
    } else if !matches!(acks, -1..=1) {
        Some((
            code::INVALID_REQUIRED_ACKS,
            format!("acks={acks} is not one of -1, 0, 1"),
        ))
    } else {
        None
    };
    let mut work = Vec::new();
    for t in &req.topic_data {
        let name = t.name.0.to_string();
        let meta = shard.topic(&name);
        let authorized = shard.allowed(client, acl::op::WRITE, acl::resource::TOPIC, &name);
        for p in &t.partition_data {
            let (name, index, records, refuse) =
                (name.clone(), p.index, p.records.clone(), refuse_all.clone());
            let known = meta
                .as_ref()
                .is_some_and(|m| (0..m.partitions).contains(&index));
            let shard = shard.clone();
            work.push(async move {
                if let Some((error, message)) = refuse {
                    return (name, index, error, -1, -1, Some(message));
                }
                if !authorized {
                    return (name, index, code::TOPIC_AUTHORIZATION_FAILED, -1, -1, None);
                }
                if !known {
                    return (name, index, code::UNKNOWN_TOPIC_OR_PARTITION, -1, -1, None);
                }
                let size = records.as_ref().map_or(0, Bytes::len);
                let out = shard.produce(&name, index, records, acks).await;
                if out.error == code::NONE {
                    crate::observe::bytes_in(&name, size);
                } else {
                    tracing::debug!(topic = %name, partition = index, error = out.error, message = ?out.message, "produce refused");
                }
                (name, index, out.error, out.base_offset, out.log_start, out.message)
            });
        }
    }
    let results = join_all(work).await;
    if acks == 0 {
        return Ok(None);
    }
    let mut resp = ProduceResponse::default();
    for (name, index, error, base, start, message) in results {
        let part = PartitionProduceResponse::default()
            .with_index(index)
            .with_error_code(error)
            .with_base_offset(base)
            .with_log_start_offset(start)
            .with_error_message(message.map(s));
        match resp
            .responses
            .iter_mut()
            .find(|t| t.name.0.as_str() == name)
        {
            Some(t) => t.partition_responses.push(part),
            None => resp.responses.push(
                TopicProduceResponse::default()
                    .with_name(topic_name(&name))
                    .with_partition_responses(vec![part]),
            ),
        }
    }
    respond(c, version, &resp)
}

async fn fetch(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: FetchRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = FetchResponse::default();
    if req.session_id != 0 {
        // corelog never creates fetch sessions (KIP-227): every fetch is a full one.
        resp.error_code = 70; // FETCH_SESSION_ID_NOT_FOUND
        return respond(c, version, &resp);
    }
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    // (topic, partition, offset, max bytes, Err(code) for a partition refused up front)
    #[allow(clippy::type_complexity)]
    let wanted: Vec<(String, i32, i64, usize, Result<(), i16>)> = req
        .topics
        .iter()
        .flat_map(|t| {
            let name = t.topic.0.to_string();
            let meta = shard.topic(&name);
            let authorized = shard.allowed(client, acl::op::READ, acl::resource::TOPIC, &name);
            t.partitions.iter().map(move |p| {
                let known = meta
                    .as_ref()
                    .is_some_and(|m| (0..m.partitions).contains(&p.partition));
                let check = if !authorized {
                    Err(code::TOPIC_AUTHORIZATION_FAILED)
                } else if !known {
                    Err(code::UNKNOWN_TOPIC_OR_PARTITION)
                } else if version >= 9 {
                    crate::handlers::check_leader_epoch(
                        shard,
                        &name,
                        p.partition,
                        p.current_leader_epoch,
                    )
                } else {
                    Ok(())
                };
                (
                    name.clone(),
                    p.partition,
                    p.fetch_offset,
                    p.partition_max_bytes.max(0) as usize,
                    check,
                )
            })
        })
        .collect();
    loop {
        let results = join_all(wanted.iter().map(|(name, p, offset, max, known)| {
            let shard = shard.clone();
            async move {
                if let Err(e) = known {
                    return Some(crate::partition::FetchOutcome {
                        error: *e,
                        high_watermark: -1,
                        log_start: -1,
                        records: Default::default(),
                    });
                }
                // No partition reads more than the whole response may hold (Kafka's rule:
                // the request's max_bytes bounds every partition too; one batch always fits).
                Some(
                    shard
                        .fetch(name, *p, *offset, (*max).min(max_bytes).max(1))
                        .await,
                )
            }
        }))
        .await;
        let total: usize = results.iter().flatten().map(|r| r.records.len()).sum();
        let errored = results
            .iter()
            .any(|r| r.as_ref().is_none_or(|r| r.error != code::NONE));
        if total >= min_bytes.max(1) || errored || Instant::now() >= deadline {
            let mut budget = max_bytes;
            let mut first = true;
            let mut splicer = Splicer::default();
            for ((name, p, _, _, _), r) in wanted.iter().zip(results) {
                let mut part = PartitionData::default().with_partition_index(*p);
                match r {
                    None => part.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(r) => {
                        part.error_code = r.error;
                        part.high_watermark = r.high_watermark;
                        part.last_stable_offset = r.high_watermark;
                        part.log_start_offset = r.log_start;
                        // The response limit is soft like Kafka's: the first non-empty
                        // partition is always served whole so a big batch cannot stall.
                        if r.records.len() <= budget || first {
                            budget = budget.saturating_sub(r.records.len());
                            first &= r.records.is_empty();
                            crate::observe::bytes_out(name, r.records.len());
                            part.records = Some(splicer.register(r.records));
                        }
                    }
                }
                match resp
                    .responses
                    .iter_mut()
                    .find(|t| t.topic.0.as_str() == name)
                {
                    Some(t) => t.partitions.push(part),
                    None => resp.responses.push(
                        FetchableTopicResponse::default()
                            .with_topic(topic_name(name))
                            .with_partitions(vec![part]),
                    ),
                }
            }
            return respond_splicing(c, version, &resp, splicer);
        }
        // Long poll: wait until any partition has data past its offset, or the deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        let waits: Vec<_> = wanted
            .iter()
            .map(|(name, p, offset, _, _)| {
                let shard = shard.clone();
                let name = name.clone();
                let (p, offset) = (*p, *offset);
                Box::pin(async move { shard.wait(&name, p, offset, left.as_millis() as u64).await })
            })
            .collect();
        if waits.is_empty() {
            glommio::timer::sleep(left).await;
        } else {
            futures_lite::future::or(
                async {
                    futures::future::select_all(waits).await;
                },
                glommio::timer::sleep(left),
            )
            .await;
        }
    }
}

async fn list_offsets(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: ListOffsetsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = ListOffsetsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let authorized = shard.allowed(client, acl::op::DESCRIBE, acl::resource::TOPIC, &name);
        let meta = shard.topic(&name).filter(|_| authorized);
        let parts = join_all(t.partitions.iter().map(|p| {
            let shard = shard.clone();
            let name = name.clone();
            let known = meta
                .as_ref()
                .is_some_and(|m| (0..m.partitions).contains(&p.partition_index));
            let (index, ts) = (p.partition_index, p.timestamp);
            async move {
                let mut r = ListOffsetsPartitionResponse::default().with_partition_index(index);
                let answer = if known {
                    match shard
                        .query(&name, index, Query::ListOffset { timestamp: ts })
                        .await
                    {
                        Ok(Answer::Offset { offset, timestamp }) => Ok((offset, timestamp)),
                        Ok(_) => Err(code::UNKNOWN_SERVER_ERROR),
                        Err((e, _)) => Err(e),
                    }
                } else if !authorized {
                    Err(code::TOPIC_AUTHORIZATION_FAILED)
                } else {
                    Err(code::UNKNOWN_TOPIC_OR_PARTITION)
                };
                match answer {
                    Ok((offset, timestamp)) => {
                        r.offset = offset;
                        r.timestamp = timestamp;
                    }
                    Err(e) => {
                        r.error_code = e;
                        r.offset = -1;
                        r.timestamp = -1;
                    }
                }
                r
            }
        }))
        .await;
        resp.topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic_name(&name))
                .with_partitions(parts),
        );
    }
    respond(c, version, &resp)
}

fn config_source(meta: &TopicMeta, key: &str) -> i8 {
    // DYNAMIC_TOPIC_CONFIG for an override, DEFAULT_CONFIG otherwise.
    if meta.configs.contains_key(key) { 1 } else { 5 }
}

fn config_type(key: &str) -> i8 {
    topic_configs::find(key).map_or(topic_configs::Kind::Text, |t| t.kind) as i8
}

fn effective(shard: &Shard, meta: &TopicMeta, key: &str) -> Option<String> {
    meta.configs
        .get(key)
        .cloned()
        .or_else(|| topic_default(&shard.cfg, key))
}

async fn create_topics(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: CreateTopicsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = CreateTopicsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut partitions = if t.num_partitions == -1 {
            shard.cfg.default_partitions
        } else {
            t.num_partitions
        };
        let mut rf = t.replication_factor;
        let mut error = (!shard.may_create_topic(client, &name)).then(|| {
            (
                code::TOPIC_AUTHORIZATION_FAILED,
                format!("{} may not create topic '{name}'", client.principal),
            )
        });
        if error.is_none() && !t.assignments.is_empty() {
            partitions = t.assignments.len() as i32;
            rf = 1;
            if t.assignments.iter().any(|a| {
                a.broker_ids.iter().any(|b| b.0 != shard.cfg.node_id) || a.broker_ids.len() != 1
            }) {
                error = Some((
                    code::INVALID_REPLICA_ASSIGNMENT,
                    format!("only broker {} exists", shard.cfg.node_id),
                ));
            }
        }
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let result = match error {
            Some((e, m)) => AdminResult::Err(e, m),
            None => {
                shard
                    .admin(AdminOp::CreateTopic {
                        name: name.clone(),
                        partitions,
                        replication_factor: rf,
                        configs,
                        validate_only: req.validate_only,
                    })
                    .await
            }
        };
        let mut r = CreatableTopicResult::default().with_name(topic_name(&name));
        match result {
            AdminResult::Ok(Some(meta)) => {
                tracing::info!(topic = %name, partitions = meta.partitions, "created topic");
                r.topic_id = uuid(meta.id);
                r.num_partitions = meta.partitions;
                r.replication_factor = 1;
                r.configs = Some(
                    TOPIC_CONFIGS
                        .iter()
                        .map(|t| t.name)
                        .map(|k| {
                            CreatableTopicConfigs::default()
                                .with_name(s(k))
                                .with_value(effective(shard, &meta, k).map(s))
                                .with_config_source(config_source(&meta, k))
                        })
                        .collect(),
                );
            }
            AdminResult::Err(e, m) => {
                r.error_code = e;
                r.error_message = Some(s(m));
                r.num_partitions = -1;
                r.replication_factor = -1;
            }
            _ => r.error_code = code::UNKNOWN_SERVER_ERROR,
        }
        resp.topics.push(r);
    }
    respond(c, version, &resp)
}

async fn delete_topics(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: DeleteTopicsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut targets: Vec<(Option<String>, [u8; 16])> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), [0; 16]))
        .collect();
    targets.extend(req.topics.iter().map(|t| {
        (
            t.name.as_ref().map(|n| n.0.to_string()),
            *t.topic_id.as_bytes(),
        )
    }));
    let mut resp = DeleteTopicsResponse::default();
    for (name, id) in targets {
        let name = name.or_else(|| {
            shard
                .topics
                .borrow()
                .values()
                .find(|t| t.id == id)
                .map(|t| t.name.clone())
        });
        let mut r = DeletableTopicResult::default().with_topic_id(uuid(id));
        match name {
            None => r.error_code = code::UNKNOWN_TOPIC_ID,
            Some(name) if !shard.allowed(client, acl::op::DELETE, acl::resource::TOPIC, &name) => {
                r.name = Some(topic_name(&name));
                r.error_code = code::TOPIC_AUTHORIZATION_FAILED;
            }
            Some(name) => {
                r.name = Some(topic_name(&name));
                match shard
                    .admin(AdminOp::DeleteTopic { name: name.clone() })
                    .await
                {
                    AdminResult::Ok(Some(m)) => {
                        tracing::info!(topic = %name, "deleted topic");
                        r.topic_id = uuid(m.id);
                    }
                    AdminResult::Err(e, m) => {
                        r.error_code = e;
                        r.error_message = Some(s(m));
                    }
                    _ => r.error_code = code::UNKNOWN_SERVER_ERROR,
                }
            }
        }
        resp.responses.push(r);
    }
    respond(c, version, &resp)
}

async fn init_producer_id(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: InitProducerIdRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    if req
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.0.is_empty())
    {
        tracing::info!(
            "refused InitProducerId with a transactional id: transactions are not supported"
        );
        resp.error_code = code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return respond(c, version, &resp);
    }
    // An idempotent producer: IdempotentWrite on the cluster, or Write on any topic
    // (KIP-679).
    if !shard.allowed_cluster(client, acl::op::IDEMPOTENT_WRITE)
        && !shard.allowed_any(client, acl::op::WRITE, acl::resource::TOPIC)
    {
        resp.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        return respond(c, version, &resp);
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        // KIP-360: an idempotent producer bumps its epoch to reset its sequences.
        resp.producer_id = req.producer_id;
        resp.producer_epoch = req.producer_epoch + 1;
        return respond(c, version, &resp);
    }
    match shard.admin(AdminOp::AllocProducerId).await {
        AdminResult::ProducerId(id) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = 0;
        }
        AdminResult::Err(e, m) => {
            tracing::error!(error = %m, "cannot allocate a producer id");
            resp.error_code = e;
        }
        AdminResult::Ok(_) => resp.error_code = code::UNKNOWN_SERVER_ERROR,
    }
    respond(c, version, &resp)
}

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// The broker's configuration under Kafka's names, as DescribeConfigs reports it.
fn broker_configs(cfg: &crate::config::Config) -> Vec<(&'static str, String, topic_configs::Kind)> {
    use topic_configs::Kind::{Boolean, Int, List, Long, Text};
    let listeners = cfg.listener_list().unwrap_or_default();
    let list = |f: &dyn Fn(&crate::config::Listener) -> String| {
        listeners.iter().map(f).collect::<Vec<_>>().join(",")
    };
    let opt = |v: Option<u64>| v.map_or(-1, |b| b as i64).to_string();
    vec![
        ("node.id", cfg.node_id.to_string(), Int),
        ("broker.id", cfg.node_id.to_string(), Int),
        (
            "listeners",
            list(&|l| format!("{}://{}", l.name, l.addr)),
            List,
        ),
        (
            "advertised.listeners",
            list(&|l| format!("{}://{}:{}", l.name, l.advertised.0, l.advertised.1)),
            List,
        ),
        ("log.dirs", cfg.data_dir.display().to_string(), Text),
        ("num.partitions", cfg.default_partitions.to_string(), Int),
        ("default.replication.factor", "1".into(), Int),
        ("offsets.topic.replication.factor", "1".into(), Int),
        (
            "auto.create.topics.enable",
            cfg.auto_create_topics.to_string(),
            Boolean,
        ),
        ("message.max.bytes", cfg.max_message_bytes.to_string(), Int),
        (
            "socket.request.max.bytes",
            cfg.max_request_bytes.to_string(),
            Int,
        ),
        (
            "queued.max.request.bytes",
            cfg.queued_max_request_bytes.to_string(),
            Long,
        ),
        (
            "connections.max.idle.ms",
            cfg.connections_max_idle_ms.to_string(),
            Long,
        ),
        (
            "max.connections.per.ip",
            cfg.max_connections_per_ip.to_string(),
            Int,
        ),
        ("log.segment.bytes", cfg.segment_bytes.to_string(), Int),
        // The broker-wide defaults are the topic configs' defaults.
        (
            "log.roll.ms",
            topic_default(cfg, "segment.ms").unwrap_or_default(),
            Long,
        ),
        (
            "log.retention.ms",
            topic_default(cfg, "retention.ms").unwrap_or_default(),
            Long,
        ),
        (
            "log.retention.bytes",
            topic_default(cfg, "retention.bytes").unwrap_or_default(),
            Long,
        ),
        (
            "log.retention.check.interval.ms",
            cfg.retention_check_interval_ms.to_string(),
            Long,
        ),
        (
            "log.message.timestamp.before.max.ms",
            cfg.message_timestamp_before_max_ms.to_string(),
            Long,
        ),
        (
            "log.message.timestamp.after.max.ms",
            cfg.message_timestamp_after_max_ms.to_string(),
            Long,
        ),
        (
            "storage_min_free_bytes",
            opt(cfg.storage_min_free_bytes),
            Long,
        ),
    ]
}

fn describe_configs(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: DescribeConfigsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = DescribeConfigsResponse::default();
    for r in req.resources {
        let mut out = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let wanted = |k: &str| {
            r.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
        };
        let op = acl::op::DESCRIBE_CONFIGS;
        match r.resource_type {
            TOPIC if !shard.allowed(client, op, acl::resource::TOPIC, r.resource_name.as_str()) => {
                out.error_code = code::TOPIC_AUTHORIZATION_FAILED;
            }
            BROKER if !shard.allowed_cluster(client, op) => {
                out.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
            }
            TOPIC => match shard.topic(r.resource_name.as_str()) {
                None => {
                    out.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    out.error_message = Some(s(format!(
                        "topic '{}' does not exist",
                        r.resource_name.as_str()
                    )));
                }
                Some(meta) => {
                    out.configs = TOPIC_CONFIGS
                        .iter()
                        .map(|t| t.name)
                        .filter(|k| wanted(k))
                        .map(|k| {
                            DescribeConfigsResourceResult::default()
                                .with_name(s(k))
                                .with_value(effective(shard, &meta, k).map(s))
                                .with_config_source(config_source(&meta, k))
                                .with_config_type(config_type(k))
                                .with_documentation(topic_configs::note(k).map(s))
                        })
                        .collect();
                }
            },
            BROKER => {
                out.configs = broker_configs(&shard.cfg)
                    .into_iter()
                    .filter(|(k, _, _)| wanted(k))
                    .map(|(k, v, kind)| {
                        DescribeConfigsResourceResult::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                            // From the config file or flags; changed by a restart only.
                            .with_read_only(true)
                            .with_is_sensitive(false)
                            .with_config_source(4) // STATIC_BROKER_CONFIG
                            .with_config_type(kind as i8)
                    })
                    .collect();
            }
            other => {
                out.error_code = code::INVALID_REQUEST;
                out.error_message = Some(s(format!("resource type {other} has no configs here")));
            }
        }
        resp.results.push(out);
    }
    respond(c, version, &resp)
}

async fn set_configs(
    shard: &Rc<Shard>,
    client: &crate::coordinator::Client,
    resource_type: i8,
    name: &str,
    configs: Result<BTreeMap<String, String>, String>,
    validate_only: bool,
) -> (i16, Option<String>) {
    if resource_type != TOPIC {
        return (
            code::INVALID_REQUEST,
            Some(
                "only topic configs can be changed; broker configs come from the config file"
                    .into(),
            ),
        );
    }
    if !shard.allowed(client, acl::op::ALTER_CONFIGS, acl::resource::TOPIC, name) {
        return (code::TOPIC_AUTHORIZATION_FAILED, None);
    }
    let configs = match configs {
        Ok(c) => c,
        Err(m) => return (code::INVALID_CONFIG, Some(m)),
    };
    match shard
        .admin(AdminOp::SetConfigs {
            name: name.to_string(),
            configs,
            validate_only,
        })
        .await
    {
        AdminResult::Ok(_) => {
            tracing::info!(topic = %name, "changed topic configs");
            (code::NONE, None)
        }
        AdminResult::Err(e, m) => (e, Some(m)),
        AdminResult::ProducerId(_) => (code::UNKNOWN_SERVER_ERROR, None),
    }
}

async fn alter_configs(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: AlterConfigsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let mut resp = AlterConfigsResponse::default();
    for r in req.resources {
        // AlterConfigs replaces the whole set of overrides.
        let configs = Ok(r
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect());
        let (error, message) = set_configs(
            shard,
            client,
            r.resource_type,
            r.resource_name.as_str(),
            configs,
            req.validate_only,
        )
        .await;
        resp.responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(error)
                .with_error_message(message.map(s))
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name),
        );
    }
    respond(c, version, &resp)
}

async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: IncrementalAlterConfigsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let mut resp = IncrementalAlterConfigsResponse::default();
    for r in req.resources {
        let name = r.resource_name.to_string();
        let configs = match shard.topic(&name) {
            None if r.resource_type == TOPIC => Err(format!("topic '{name}' does not exist")),
            current => {
                let mut configs = current.map(|m| m.configs).unwrap_or_default();
                r.configs
                    .iter()
                    .try_for_each(|op| {
                        topic_configs::apply_op(
                            &shard.cfg,
                            &mut configs,
                            op.name.as_str(),
                            op.config_operation,
                            op.value.as_deref(),
                        )
                    })
                    .map(|()| configs)
            }
        };
        let (error, message) = match configs {
            Err(m) if r.resource_type == TOPIC && shard.topic(&name).is_none() => {
                (code::UNKNOWN_TOPIC_OR_PARTITION, Some(m))
            }
            configs => {
                set_configs(
                    shard,
                    client,
                    r.resource_type,
                    &name,
                    configs,
                    req.validate_only,
                )
                .await
            }
        };
        resp.responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(error)
                .with_error_message(message.map(s))
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name),
        );
    }
    respond(c, version, &resp)
}

fn describe_cluster(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = DescribeClusterResponse::default();
    resp.cluster_id = s(shard.cluster_id.borrow().clone());
    resp.controller_id = BrokerId(crate::handlers::controller_id(shard));
    resp.endpoint_type = 1;
    resp.brokers = crate::handlers::brokers(shard, client.listener)
        .into_iter()
        .map(|(node, host, port)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(node))
                .with_host(s(host))
                .with_port(port)
        })
        .collect();
    respond(c, version, &resp)
}
