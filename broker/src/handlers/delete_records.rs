//! DeleteRecords (21): moves a partition's log start up (`kafka-delete-records`, the admin
//! clients' `delete_records`). Each partition's own task does it, on whichever shard owns
//! it, durably before the answer; the answer's low watermark is the new log start.

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::api::{Reply, respond};
use crate::errors as code;
use crate::partition::{Answer, Query};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: DeleteRecordsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = DeleteRecordsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let authorized = shard.allowed(
            client,
            crate::acl::op::DELETE,
            crate::acl::resource::TOPIC,
            &name,
        );
        let meta = shard.topic(&name);
        let partitions = join_all(t.partitions.into_iter().map(|p| {
            let known = meta
                .as_ref()
                .is_some_and(|m| (0..m.partitions).contains(&p.partition_index));
            let name = &name;
            async move {
                let mut r = DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1);
                if !authorized {
                    r.error_code = code::TOPIC_AUTHORIZATION_FAILED;
                    return r;
                }
                if !known {
                    r.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    return r;
                }
                let query = Query::DeleteRecords { offset: p.offset };
                match shard.query(name, p.partition_index, query).await {
                    Ok(Answer::LogStart(start)) => r.low_watermark = start,
                    Ok(_) => r.error_code = code::UNKNOWN_SERVER_ERROR,
                    Err((error, why)) => {
                        tracing::debug!(topic = %name, partition = p.partition_index, error, "delete records refused: {why}");
                        r.error_code = error;
                    }
                }
                r
            }
        }))
        .await;
        resp.topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    respond(c, version, &resp)
}
