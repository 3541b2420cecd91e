//! Cluster metadata of a single broker: topics, their partition counts, ids and config
//! overrides, the cluster id and the producer-id block. Shard 0 owns the file and is the
//! only writer; every shard holds a copy it is told about when it changes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// Kafka topic id (a UUID), stable for the life of the topic.
    pub id: [u8; 16],
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
    /// On a cluster: each partition's replica set (leader preference first) and its
    /// replication group, from the controller. Empty on a single-node broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Vec<i32>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetaFile {
    pub cluster_id: String,
    /// Producer ids below this may have been handed out: a restart allocates above it.
    pub producer_id_reserved: i64,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Users (SCRAM credentials) and ACLs made through the Kafka API.
    #[serde(default)]
    pub security: corelog_replication::security::SecurityMetadata,
}

const FILE: &str = "cluster-meta.json";

impl MetaFile {
    /// Loads the metadata of `data_dir`, or starts a fresh cluster there.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let m = Self {
                    cluster_id: random_cluster_id(),
                    producer_id_reserved: 0,
                    topics: BTreeMap::new(),
                    security: Default::default(),
                };
                m.save(data_dir)?;
                Ok(m)
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the file atomically and durably (write, fsync, rename, fsync the dir), so
    /// a crash leaves the old or the new metadata, never a torn one.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let tmp: PathBuf = data_dir.join(format!("{FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, data_dir.join(FILE))?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}

fn random_cluster_id() -> String {
    // Kafka cluster ids are 22-char base64url UUIDs; any stable string works for clients.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

pub fn random_topic_id() -> [u8; 16] {
    let mut id = fastrand::u128(..).to_be_bytes();
    // RFC 4122 version 4, variant 1, like Kafka's Uuid.randomUuid().
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Kafka's topic name rules: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters long; the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Where a partition's log lives.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join("topics").join(format!("{topic}-{partition}"))
}

/// The shard that owns a partition: stable across restarts with the same shard count,
/// and spreading a topic's partitions over consecutive shards.
pub fn owner_shard(topic: &str, partition: i32, shards: usize) -> usize {
    ((u64::from(crc32c::crc32c(topic.as_bytes())) + partition as u64) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MetaFile::load_or_create(dir.path()).unwrap();
        m.topics.insert(
            "t".into(),
            TopicMeta {
                name: "t".into(),
                id: random_topic_id(),
                partitions: 3,
                configs: BTreeMap::new(),
                replicas: Vec::new(),
                groups: Vec::new(),
            },
        );
        m.save(dir.path()).unwrap();
        let again = MetaFile::load_or_create(dir.path()).unwrap();
        assert_eq!(again.cluster_id, m.cluster_id);
        assert_eq!(again.topics, m.topics);
    }

    #[test]
    fn partitions_spread_over_shards() {
        let owners: std::collections::BTreeSet<usize> =
            (0..4).map(|p| owner_shard("t", p, 2)).collect();
        assert_eq!(owners.len(), 2);
    }
}
