//! CreatePartitions (37): grows a topic. Shard 0 changes the metadata and every shard opens
//! the new partitions it owns; all or nothing (a failure takes the added ones back out).

use std::rc::Rc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::api::{Reply, respond};
use crate::errors as code;
use crate::shard::{AdminOp, AdminResult, Shard};

pub async fn handle(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: CreatePartitionsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    let mut resp = CreatePartitionsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        // One broker: an explicit assignment may only name this one.
        let foreign = t.assignments.iter().flatten().any(|a| {
            a.broker_ids.len() != 1 || a.broker_ids.iter().any(|b| b.0 != shard.cfg.node_id)
        });
        let (error, message) = if !shard.allowed(
            client,
            crate::acl::op::ALTER,
            crate::acl::resource::TOPIC,
            &name,
        ) {
            (code::TOPIC_AUTHORIZATION_FAILED, None)
        } else if foreign {
            (
                code::INVALID_REPLICA_ASSIGNMENT,
                Some(format!(
                    "assignments may only name broker {} with one replica",
                    shard.cfg.node_id
                )),
            )
        } else {
            match shard
                .admin(AdminOp::AddPartitions {
                    name: name.clone(),
                    count: t.count,
                    validate_only: req.validate_only,
                })
                .await
            {
                AdminResult::Ok(_) => {
                    if !req.validate_only {
                        tracing::info!(topic = %name, partitions = t.count, "added partitions");
                    }
                    (code::NONE, None)
                }
                AdminResult::Err(e, m) => (e, Some(m)),
                AdminResult::ProducerId(_) => (code::UNKNOWN_SERVER_ERROR, None),
            }
        };
        resp.results.push(
            CreatePartitionsTopicResult::default()
                .with_name(t.name)
                .with_error_code(error)
                .with_error_message(message.map(StrBytes::from_string)),
        );
    }
    respond(c, version, &resp)
}
