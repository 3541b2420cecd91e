//! The controller group: cluster metadata (brokers, topics, partition -> replica sets) as
//! one more Raft group of the same core, group 0 by convention.
//!
//! A metadata change is a [`MetadataCommand`] carried as the value of the single record of
//! an ordinary RecordBatch (key [`METADATA_KEY`], value rkyv-archived, validated on
//! decode), so the controller's log is stored, replicated and recovered exactly like a
//! partition's. Every broker applies committed commands, in offset order, to its
//! [`ClusterMetadata`]; `apply` is deterministic, so replicas that applied the same prefix
//! hold the same metadata (the simulator checks their fingerprints).
//!
//! Decisions that need judgment (which brokers get a partition's replicas) are made by the
//! proposer with [`assign_replicas`] and written into the command, never at apply time.

use std::collections::BTreeMap;

use corelog_storage::batch::{self, BatchHeader, build};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::node::GroupId;
use crate::security::{SecurityCommand, SecurityMetadata};
use crate::{NodeId, Offset};

/// The controller's group id on every broker.
pub const CONTROLLER_GROUP: GroupId = 0;
/// Record key marking a metadata command (and its format version).
pub const METADATA_KEY: &[u8] = b"corelog.metadata.v1";
/// Kafka's limit on topic name length.
pub const MAX_TOPIC_NAME: usize = 249;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MetadataCommand {
    RegisterBroker {
        id: NodeId,
        host: String,
        port: u16,
    },
    CreateTopic {
        name: String,
        /// Kafka's topic id (a UUID), chosen by the proposer.
        id: [u8; 16],
        /// Replica set of each partition, leader preference first.
        partitions: Vec<Vec<NodeId>>,
        configs: Vec<(String, String)>,
    },
    DeleteTopic {
        name: String,
    },
    /// Replaces a topic's config overrides.
    SetTopicConfigs {
        name: String,
        configs: Vec<(String, String)>,
    },
    /// Adds partitions (CreatePartitions), with their replica sets.
    AddPartitions {
        name: String,
        partitions: Vec<Vec<NodeId>>,
    },
    /// Users and ACLs. Boxed: the archived command keeps the size it had before this
    /// variant (rkyv finds the root at the end of the bytes by that size), so batches
    /// written before it still decode.
    Security(Box<SecurityCommand>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// Not a metadata batch, or its value does not decode.
    Malformed(String),
    TopicExists(String),
    UnknownTopic(String),
    InvalidTopicName(String),
    UnknownBroker(NodeId),
    /// Replication factor above the number of brokers, or zero partitions.
    InvalidAssignment(String),
    /// A user or ACL change that does not fit the state.
    Security(String),
}

impl std::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetadataError::Malformed(e) => write!(f, "malformed metadata batch: {e}"),
            MetadataError::TopicExists(t) => write!(f, "topic {t:?} already exists"),
            MetadataError::UnknownTopic(t) => write!(f, "unknown topic {t:?}"),
            MetadataError::InvalidTopicName(t) => write!(f, "invalid topic name {t:?}"),
            MetadataError::UnknownBroker(b) => write!(f, "unknown broker {b}"),
            MetadataError::InvalidAssignment(e) => write!(f, "invalid assignment: {e}"),
            MetadataError::Security(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MetadataError {}

/// The batch that carries `cmd` (base offset 0; the leader stamps offset and epoch).
pub fn encode_command(cmd: &MetadataCommand, now_ms: i64) -> Vec<u8> {
    let value = rkyv::to_bytes::<rancor::Error>(cmd).expect("serializing to memory cannot fail");
    build::with_records(&[(Some(METADATA_KEY), value.as_slice())], now_ms, 0)
}

/// The command in a controller batch; `Ok(None)` for batches that carry none (the
/// LEADER_CHANGE control batch every new leader writes).
pub fn decode_batch(bytes: &[u8]) -> Result<Option<MetadataCommand>, MetadataError> {
    let header = BatchHeader::parse(bytes).map_err(|e| MetadataError::Malformed(e.to_string()))?;
    if header.is_control() {
        return Ok(None);
    }
    let records = batch::records(bytes)
        .ok_or_else(|| MetadataError::Malformed("records do not parse".into()))?;
    let [record] = records.as_slice() else {
        return Err(MetadataError::Malformed(format!(
            "{} records, expected 1",
            records.len()
        )));
    };
    if record.key != Some(METADATA_KEY) {
        return Err(MetadataError::Malformed("not a metadata record".into()));
    }
    let value = record
        .value
        .ok_or_else(|| MetadataError::Malformed("null value".into()))?;
    // rkyv reads in place from aligned memory; the record value sits at any offset.
    let mut aligned = AlignedVec::<16>::with_capacity(value.len());
    aligned.extend_from_slice(value);
    rkyv::from_bytes::<MetadataCommand, rancor::Error>(&aligned)
        .map(Some)
        .map_err(|e| MetadataError::Malformed(e.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The replication group that holds this partition.
    pub group: GroupId,
    pub replicas: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub id: [u8; 16],
    pub partitions: Vec<PartitionInfo>,
    pub configs: BTreeMap<String, String>,
}

/// The metadata every broker derives from the controller's committed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
    /// Next replication group id to hand out (0 is the controller).
    pub next_group: GroupId,
    /// The cluster's id: derived from the first batch of the controller log (its first
    /// leader's LEADER_CHANGE, which carries that leader's clock), so every broker that
    /// applied it holds the same id, and two clusters differ. Empty until then.
    pub cluster_id: String,
    /// End offset of the last batch applied.
    pub applied: Offset,
    /// Users and ACLs.
    pub security: SecurityMetadata,
}

impl Default for ClusterMetadata {
    fn default() -> Self {
        Self {
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            security: SecurityMetadata::default(),
            next_group: CONTROLLER_GROUP + 1,
            cluster_id: String::new(),
            applied: 0,
        }
    }
}

impl ClusterMetadata {
    /// Applies one committed controller batch ending at `end`. A command that is invalid
    /// against the current state (a topic that exists, an unknown broker) is rejected
    /// identically on every replica and changes nothing but `applied`.
    pub fn apply_batch(&mut self, bytes: &[u8], end: Offset) -> Result<(), MetadataError> {
        debug_assert!(end > self.applied, "batches apply in offset order");
        if self.applied == 0 && bytes.len() > 21 {
            self.cluster_id = cluster_id_of(&bytes[21..]);
        }
        self.applied = end;
        match decode_batch(bytes)? {
            Some(cmd) => self.apply(&cmd),
            None => Ok(()),
        }
    }

    fn apply(&mut self, cmd: &MetadataCommand) -> Result<(), MetadataError> {
        match cmd {
            MetadataCommand::RegisterBroker { id, host, port } => {
                self.brokers.insert(
                    *id,
                    BrokerInfo {
                        host: host.clone(),
                        port: *port,
                    },
                );
            }
            MetadataCommand::CreateTopic {
                name,
                id,
                partitions,
                configs,
            } => {
                validate_topic_name(name)?;
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists(name.clone()));
                }
                if partitions.is_empty() {
                    return Err(MetadataError::InvalidAssignment("zero partitions".into()));
                }
                self.check_replicas(partitions)?;
                let partitions = self.new_groups(partitions);
                let configs = configs.iter().cloned().collect();
                self.topics.insert(
                    name.clone(),
                    TopicInfo {
                        id: *id,
                        partitions,
                        configs,
                    },
                );
            }
            MetadataCommand::DeleteTopic { name } => {
                if self.topics.remove(name).is_none() {
                    return Err(MetadataError::UnknownTopic(name.clone()));
                }
            }
            MetadataCommand::SetTopicConfigs { name, configs } => {
                let t = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                t.configs = configs.iter().cloned().collect();
            }
            MetadataCommand::AddPartitions { name, partitions } => {
                if !self.topics.contains_key(name) {
                    return Err(MetadataError::UnknownTopic(name.clone()));
                }
                self.check_replicas(partitions)?;
                let added = self.new_groups(partitions);
                self.topics
                    .get_mut(name)
                    .expect("checked")
                    .partitions
                    .extend(added);
            }
            MetadataCommand::Security(cmd) => {
                self.security.apply(cmd).map_err(MetadataError::Security)?;
            }
        }
        Ok(())
    }

    fn check_replicas(&self, partitions: &[Vec<NodeId>]) -> Result<(), MetadataError> {
        for replicas in partitions {
            if replicas.is_empty() {
                return Err(MetadataError::InvalidAssignment(
                    "a partition without replicas".into(),
                ));
            }
            if let Some(b) = replicas.iter().find(|b| !self.brokers.contains_key(b)) {
                return Err(MetadataError::UnknownBroker(*b));
            }
        }
        Ok(())
    }

    /// A fresh replication group for each partition.
    fn new_groups(&mut self, partitions: &[Vec<NodeId>]) -> Vec<PartitionInfo> {
        partitions
            .iter()
            .map(|replicas| {
                let group = self.next_group;
                self.next_group += 1;
                PartitionInfo {
                    group,
                    replicas: replicas.clone(),
                }
            })
            .collect()
    }

    /// A hash of the whole state (FNV-1a over a canonical rendering): equal on replicas
    /// that applied the same prefix.
    pub fn fingerprint(&self) -> u64 {
        let text = format!(
            "{:?}",
            (
                &self.brokers,
                &self.topics,
                self.next_group,
                self.applied,
                &self.cluster_id,
                &self.security
            )
        );
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

/// 22 characters of base64url, the shape of Kafka's cluster ids, from `bytes`.
fn cluster_id_of(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    (0..22u8)
        .map(|i| {
            for &b in bytes.iter().chain([i].iter()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            ALPHABET[(h >> 58) as usize] as char
        })
        .collect()
}

/// Kafka's topic name rules: 1..=249 of `[a-zA-Z0-9._-]`, not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), MetadataError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(MetadataError::InvalidTopicName(name.to_string()))
    }
}

/// Round-robin replica sets: partition `p` gets `rf` consecutive brokers starting at
/// `(start + p) % brokers`, so leaders (first replicas) spread evenly.
pub fn assign_replicas(
    brokers: &[NodeId],
    partitions: u32,
    rf: u32,
    start: u32,
) -> Result<Vec<Vec<NodeId>>, MetadataError> {
    if partitions == 0 || rf == 0 || rf as usize > brokers.len() {
        return Err(MetadataError::InvalidAssignment(format!(
            "{partitions} partitions with replication factor {rf} on {} brokers",
            brokers.len()
        )));
    }
    let mut sorted = brokers.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    Ok((0..partitions as usize)
        .map(|p| {
            (0..rf as usize)
                .map(|r| sorted[(start as usize + p + r) % n])
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(cmds: &[MetadataCommand]) -> ClusterMetadata {
        let mut m = ClusterMetadata::default();
        for (i, c) in cmds.iter().enumerate() {
            let _ = m.apply_batch(&encode_command(c, 0), i as u64 + 1);
        }
        m
    }

    fn broker(id: NodeId) -> MetadataCommand {
        MetadataCommand::RegisterBroker {
            id,
            host: format!("10.0.0.{id}"),
            port: 9092,
        }
    }

    #[test]
    fn commands_round_trip_through_a_record_batch() {
        let cmd = MetadataCommand::CreateTopic {
            name: "orders".into(),
            id: [7; 16],
            partitions: vec![vec![1, 2, 3], vec![2, 3, 1]],
            configs: vec![("retention.ms".into(), "1000".into())],
        };
        let b = encode_command(&cmd, 5);
        corelog_storage::batch::validate(&b, 1 << 20).unwrap();
        assert_eq!(decode_batch(&b).unwrap(), Some(cmd));
        let control = crate::raft::leader_change_batch(1, &[1, 2, 3], 0);
        assert_eq!(decode_batch(&control).unwrap(), None);
        let data = build::batch(&[b"not metadata"], 0);
        assert!(matches!(
            decode_batch(&data),
            Err(MetadataError::Malformed(_))
        ));
    }

    /// rkyv finds an archive's root at its end by the root type's size: a new variant that
    /// grew the archived command would make every batch already in a controller log
    /// unreadable.
    #[test]
    fn the_archived_command_keeps_its_size_so_old_logs_decode() {
        assert_eq!(std::mem::size_of::<ArchivedMetadataCommand>(), 44);
        let cmd = MetadataCommand::Security(Box::new(SecurityCommand::CreateAcls {
            bindings: vec![crate::security::AclBinding {
                resource_type: 2,
                resource_name: "orders".into(),
                pattern_type: 4,
                principal: "User:alice".into(),
                host: "*".into(),
                operation: 3,
                permission: 3,
            }],
        }));
        assert_eq!(decode_batch(&encode_command(&cmd, 0)).unwrap(), Some(cmd));
    }

    #[test]
    fn apply_is_deterministic_and_rejects_invalid_commands_alike() {
        let cmds = vec![
            broker(1),
            broker(2),
            MetadataCommand::CreateTopic {
                name: "a".into(),
                id: [7; 16],
                partitions: vec![vec![1, 2]; 3],
                configs: vec![],
            },
            MetadataCommand::CreateTopic {
                name: "a".into(),
                id: [7; 16],
                partitions: vec![vec![1]],
                configs: vec![],
            },
            MetadataCommand::CreateTopic {
                name: "b".into(),
                id: [7; 16],
                partitions: vec![vec![9]],
                configs: vec![],
            },
            MetadataCommand::CreateTopic {
                name: "bad/name".into(),
                id: [7; 16],
                partitions: vec![vec![1]],
                configs: vec![],
            },
            MetadataCommand::CreateTopic {
                name: "c".into(),
                id: [7; 16],
                partitions: vec![vec![2, 1]],
                configs: vec![],
            },
            MetadataCommand::DeleteTopic { name: "zz".into() },
        ];
        let m = committed(&cmds);
        assert_eq!(m, committed(&cmds));
        assert_eq!(m.fingerprint(), committed(&cmds).fingerprint());
        assert_eq!(m.topics.keys().collect::<Vec<_>>(), vec!["a", "c"]);
        let groups: Vec<GroupId> = m.topics["a"].partitions.iter().map(|p| p.group).collect();
        assert_eq!(groups, vec![1, 2, 3]);
        assert_eq!(
            m.topics["c"].partitions[0].group, 4,
            "rejected commands take no group id"
        );
        assert_eq!(m.applied, cmds.len() as u64);
        let mut d = m.clone();
        d.apply_batch(
            &encode_command(&MetadataCommand::DeleteTopic { name: "a".into() }, 0),
            99,
        )
        .unwrap();
        assert!(!d.topics.contains_key("a"));
        assert_ne!(d.fingerprint(), m.fingerprint());
    }

    proptest::proptest! {
        /// A metadata batch with any byte of its value changed decodes to a valid command
        /// or is refused: rkyv validates, it never trusts.
        #[test]
        fn damaged_values_are_refused_or_valid(at in 0usize..400, flip in 1u8..=255) {
            let cmd = MetadataCommand::CreateTopic {
                name: "orders".into(),
                id: [7; 16],
                partitions: vec![vec![1, 2, 3]; 4],
                configs: vec![("retention.ms".into(), "60000".into())],
            };
            let value = rkyv::to_bytes::<rancor::Error>(&cmd).unwrap().to_vec();
            let mut v = value.clone();
            let at = at % v.len();
            v[at] ^= flip;
            let b = build::with_records(&[(Some(METADATA_KEY), v.as_slice())], 0, 0);
            // Whatever is accepted is a well-formed command: it survives a round trip.
            if let Ok(Some(got)) = decode_batch(&b) {
                proptest::prop_assert_eq!(decode_batch(&encode_command(&got, 0)).unwrap(), Some(got));
            }
        }
    }

    #[test]
    fn replicas_spread_round_robin_and_limits_hold() {
        let a = assign_replicas(&[3, 1, 2], 4, 2, 0).unwrap();
        assert_eq!(a, vec![vec![1, 2], vec![2, 3], vec![3, 1], vec![1, 2]]);
        assert!(assign_replicas(&[1, 2], 1, 3, 0).is_err());
        assert!(assign_replicas(&[1, 2], 0, 1, 0).is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("user-events_v1.2").is_ok());
    }
}
