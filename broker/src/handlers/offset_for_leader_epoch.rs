//! OffsetForLeaderEpoch (23): where a leader epoch ends in the partition's log (KIP-101,
//! KIP-320). A consumer whose position came from an older leader asks it after a leader
//! change; an end below its position means the new leader truncated what it had read.
//! Answered by the partition's leader from its term history (each term is a Kafka leader
//! epoch).

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::api::{Reply, respond};
use crate::errors as code;
use crate::partition::{Answer, Query};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: OffsetForLeaderEpochRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let name = t.topic.0.to_string();
        let authorized = shard.allowed(
            client,
            crate::acl::op::DESCRIBE,
            crate::acl::resource::TOPIC,
            &name,
        );
        let meta = shard.topic(&name);
        let partitions = join_all(t.partitions.into_iter().map(|p| {
            let known = meta
                .as_ref()
                .is_some_and(|m| (0..m.partitions).contains(&p.partition));
            let name = &name;
            async move {
                let mut r = EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1);
                if !authorized {
                    r.error_code = code::TOPIC_AUTHORIZATION_FAILED;
                    return r;
                }
                if !known {
                    r.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    return r;
                }
                if let Err(e) =
                    super::check_leader_epoch(shard, name, p.partition, p.current_leader_epoch)
                {
                    r.error_code = e;
                    return r;
                }
                match shard
                    .query(
                        name,
                        p.partition,
                        Query::EpochEnd {
                            epoch: p.leader_epoch,
                        },
                    )
                    .await
                {
                    Ok(Answer::EpochEnd { epoch, end_offset }) => {
                        r.leader_epoch = epoch;
                        r.end_offset = end_offset;
                    }
                    Ok(_) => r.error_code = code::UNKNOWN_SERVER_ERROR,
                    Err((error, _)) => r.error_code = error,
                }
                r
            }
        }))
        .await;
        resp.topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    respond(c, version, &resp)
}
