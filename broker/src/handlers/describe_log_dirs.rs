//! DescribeLogDirs (35): the broker's one data dir, its file system's size and free space,
//! and the bytes each partition holds on disk.

use std::path::Path;
use std::rc::Rc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::api::{Reply, respond};
use crate::shard::Shard;
use crate::topics::partition_dir;

/// Bytes of the files in a partition's dir (its segments and indexes). An admin request,
/// rare: the few metadata calls run on the shard's thread.
fn dir_bytes(dir: &Path) -> i64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len() as i64)
        .sum()
}

pub fn handle(
    shard: &Rc<Shard>,
    c: i32,
    version: i16,
    req: DescribeLogDirsRequest,
    client: &crate::coordinator::Client,
) -> Reply {
    if !shard.allowed_cluster(client, crate::acl::op::DESCRIBE) {
        // Kafka answers an empty list (v3+ with the error too).
        let resp = DescribeLogDirsResponse::default()
            .with_error_code(crate::errors::CLUSTER_AUTHORIZATION_FAILED);
        return respond(c, version, &resp);
    }
    let topics = shard.topics.borrow().clone();
    let wanted: Vec<(String, Vec<i32>)> = match req.topics {
        None => topics
            .values()
            .map(|m| (m.name.clone(), (0..m.partitions).collect()))
            .collect(),
        Some(ts) => ts
            .into_iter()
            .filter_map(|t| {
                let m = topics.get(t.topic.0.as_str())?;
                let ps = t
                    .partitions
                    .into_iter()
                    .filter(|p| (0..m.partitions).contains(p))
                    .collect();
                Some((m.name.clone(), ps))
            })
            .collect(),
    };
    let data_dir = &shard.cfg.data_dir;
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(data_dir.display().to_string()));
    if let Ok(s) = nix::sys::statvfs::statvfs(data_dir) {
        let frag = s.fragment_size() as i64;
        result.total_bytes = s.blocks() as i64 * frag;
        result.usable_bytes = s.blocks_available() as i64 * frag;
    } else {
        result.total_bytes = -1;
        result.usable_bytes = -1;
    }
    result.topics = wanted
        .into_iter()
        .filter(|(_, ps)| !ps.is_empty())
        .map(|(name, ps)| {
            DescribeLogDirsTopic::default()
                .with_partitions(
                    ps.into_iter()
                        .map(|p| {
                            DescribeLogDirsPartition::default()
                                .with_partition_index(p)
                                .with_partition_size(dir_bytes(&partition_dir(data_dir, &name, p)))
                                .with_offset_lag(0)
                        })
                        .collect(),
                )
                .with_name(TopicName(StrBytes::from_string(name)))
        })
        .collect();
    let resp = DescribeLogDirsResponse::default().with_results(vec![result]);
    respond(c, version, &resp)
}
