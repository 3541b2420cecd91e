//! DescribeTopicPartitions (75, KIP-966): Metadata's topic and partition view, paged by a
//! cursor, which Kafka's own admin client uses to describe topics since 3.8. Pages follow
//! Kafka's rules: topics sorted by name, at most `response_partition_limit` partitions
//! (capped at 2,000) per response, and a `next_cursor` naming where the next page starts.

use std::rc::Rc;

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::api::{Reply, respond};
use crate::errors as code;
use crate::handlers::placement;
use crate::shard::Shard;

/// Kafka's `max.request.partition.size.limit` default.
const MAX_PARTITIONS: i32 = 2000;

/// Topic operations allowed to everyone while there is no authorizer (READ, WRITE,
/// CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS as AclOperation bits),
/// what Kafka reports without one.
const ALL_TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);

fn is_internal(name: &str) -> bool {
    matches!(name, "__consumer_offsets" | "__transaction_state")
}

pub fn handle(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: DescribeTopicPartitionsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let topics = shard.topics.borrow().clone();
    let may = |n: &str| {
        shard.allowed(
            client,
            crate::acl::op::DESCRIBE,
            crate::acl::resource::TOPIC,
            n,
        )
    };
    let mut names: Vec<String> = if req.topics.is_empty() {
        topics.keys().filter(|n| may(n)).cloned().collect()
    } else {
        req.topics.iter().map(|t| t.name.0.to_string()).collect()
    };
    names.sort();
    names.dedup();
    let mut resp = DescribeTopicPartitionsResponse::default();
    let (mut first_partition, cursor_topic) = match &req.cursor {
        Some(c) => (c.partition_index, Some(c.topic_name.0.to_string())),
        None => (0, None),
    };
    // Named topics must include the cursor's; listing all, a cursor topic deleted between
    // pages is fine: the next page starts at the first topic after it (Kafka's rules).
    if let Some(t) = &cursor_topic {
        let named = !req.topics.is_empty();
        if (named && !names.contains(t)) || first_partition < 0 {
            let e = format!("the cursor ({t}, {first_partition}) names no requested partition");
            tracing::debug!("describe topic partitions refused: {e}");
            // Kafka fails the whole request (InvalidRequestException): a top-level
            // error the response has no field for, so every topic carries it.
            resp.topics = names
                .iter()
                .map(|n| {
                    DescribeTopicPartitionsResponseTopic::default()
                        .with_error_code(code::INVALID_REQUEST)
                        .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                })
                .collect();
            return respond(c, version, &resp);
        }
    }
    let mut budget = req.response_partition_limit.clamp(1, MAX_PARTITIONS);
    let start = match &cursor_topic {
        None => 0,
        Some(t) => {
            let at = names.partition_point(|n| n < t);
            if names.get(at) != Some(t) {
                first_partition = 0;
            }
            at
        }
    };
    for (i, name) in names.iter().enumerate().skip(start) {
        let topic_name = TopicName(StrBytes::from_string(name.clone()));
        if !may(name) {
            resp.topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                    .with_name(Some(topic_name))
                    .with_topic_authorized_operations(i32::MIN),
            );
            first_partition = 0;
            continue;
        }
        let Some(meta) = topics.get(name) else {
            resp.topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION)
                    .with_name(Some(topic_name))
                    .with_topic_authorized_operations(i32::MIN),
            );
            first_partition = 0;
            continue;
        };
        let end = meta.partitions.min(first_partition.saturating_add(budget));
        let partitions = (first_partition..end)
            .map(|p| {
                let at = placement(shard, name, p);
                DescribeTopicPartitionsResponsePartition::default()
                    .with_error_code(at.error)
                    .with_partition_index(p)
                    .with_leader_id(BrokerId(at.leader))
                    .with_leader_epoch(at.leader_epoch)
                    .with_replica_nodes(at.replicas.into_iter().map(BrokerId).collect())
                    .with_isr_nodes(at.isr.into_iter().map(BrokerId).collect())
                    .with_offline_replicas(at.offline.into_iter().map(BrokerId).collect())
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new()))
            })
            .collect::<Vec<_>>();
        budget -= partitions.len() as i32;
        resp.topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(topic_name.clone()))
                .with_topic_id(uuid::Uuid::from_bytes(meta.id))
                .with_is_internal(is_internal(name))
                .with_partitions(partitions)
                .with_topic_authorized_operations(ALL_TOPIC_OPERATIONS),
        );
        if end < meta.partitions {
            resp.next_cursor = Some(
                Cursor::default()
                    .with_topic_name(topic_name)
                    .with_partition_index(end),
            );
            break;
        }
        first_partition = 0;
        // A full page that ends exactly at a topic's end points at the next topic.
        if budget == 0 {
            if let Some(next) = names.get(i + 1) {
                resp.next_cursor = Some(
                    Cursor::default()
                        .with_topic_name(TopicName(StrBytes::from_string(next.clone())))
                        .with_partition_index(0),
                );
            }
            break;
        }
    }
    respond(c, version, &resp)
}
