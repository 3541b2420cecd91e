//! DescribeProducers (61): the idempotent producers a partition knows (`kafka-transactions
//! describe-producers`, kafka-python's `describe_producers`): id, epoch, last sequence and
//! the last batch's timestamp. No transactions yet, so no coordinator epoch or open
//! transaction (-1 both, as Kafka answers for a producer outside a transaction).

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use kafka_protocol::protocol::StrBytes;

use crate::api::{Reply, respond};
use crate::errors as code;
use crate::partition::{Answer, Query};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: DescribeProducersRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = DescribeProducersResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let authorized = shard.allowed(
            client,
            crate::acl::op::READ,
            crate::acl::resource::TOPIC,
            &name,
        );
        let meta = shard.topic(&name);
        let partitions = join_all(t.partition_indexes.into_iter().map(|index| {
            let known = meta
                .as_ref()
                .is_some_and(|m| (0..m.partitions).contains(&index));
            let name = &name;
            async move {
                let mut r = PartitionResponse::default().with_partition_index(index);
                let answer = if !authorized {
                    Err((
                        code::TOPIC_AUTHORIZATION_FAILED,
                        "not authorized to Read this topic".into(),
                    ))
                } else if known {
                    shard.query(name, index, Query::Producers).await
                } else {
                    Err((
                        code::UNKNOWN_TOPIC_OR_PARTITION,
                        "this server does not host this topic-partition".into(),
                    ))
                };
                match answer {
                    Ok(Answer::Producers(ps)) => {
                        r.active_producers = ps
                            .into_iter()
                            .map(|p| {
                                ProducerState::default()
                                    .with_producer_id(ProducerId(p.producer_id))
                                    .with_producer_epoch(i32::from(p.epoch))
                                    .with_last_sequence(p.last_sequence)
                                    .with_last_timestamp(p.last_timestamp)
                                    .with_coordinator_epoch(-1)
                                    .with_current_txn_start_offset(-1)
                            })
                            .collect();
                    }
                    Ok(_) => r.error_code = code::UNKNOWN_SERVER_ERROR,
                    Err((error, why)) => {
                        r.error_code = error;
                        r.error_message = Some(StrBytes::from_string(why));
                    }
                }
                r
            }
        }))
        .await;
        resp.topics.push(
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    respond(c, version, &resp)
}
