//! Every topic config Kafka 4 documents: its type, its default, and whether corelog acts
//! on it. CreateTopics, AlterConfigs and IncrementalAlterConfigs accept all of them (and
//! nothing else: INVALID_CONFIG); DescribeConfigs lists all of them and says, in each
//! entry's documentation, when corelog stores a value without acting on it, so that no
//! setting is silently ignored.

use crate::config::Config;

/// DescribeConfigs' config types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Boolean = 1,
    Text = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

pub struct TopicConfig {
    pub name: &'static str,
    pub kind: Kind,
    /// Whether corelog applies the value (else it is stored and reported, nothing more).
    pub acted: bool,
    /// The Kafka default, for configs whose default is not the broker's (see `default`).
    pub kafka_default: &'static str,
}

const fn c(
    name: &'static str,
    kind: Kind,
    acted: bool,
    kafka_default: &'static str,
) -> TopicConfig {
    TopicConfig {
        name,
        kind,
        acted,
        kafka_default,
    }
}

use Kind::*;

/// Kafka 4.0's topic configs, in its documentation's order.
pub const TOPIC_CONFIGS: &[TopicConfig] = &[
    c("cleanup.policy", List, true, "delete"),
    c("compression.gzip.level", Int, true, "-1"),
    c("compression.lz4.level", Int, false, "9"),
    c("compression.type", Text, true, "producer"),
    c("compression.zstd.level", Int, true, "3"),
    c("delete.retention.ms", Long, false, "86400000"),
    c("file.delete.delay.ms", Long, false, "60000"),
    c("flush.messages", Long, false, "9223372036854775807"),
    c("flush.ms", Long, false, "9223372036854775807"),
    c("follower.replication.throttled.replicas", List, false, ""),
    c("index.interval.bytes", Int, false, "4096"),
    c("leader.replication.throttled.replicas", List, false, ""),
    c("local.retention.bytes", Long, false, "-2"),
    c("local.retention.ms", Long, false, "-2"),
    c("max.compaction.lag.ms", Long, false, "9223372036854775807"),
    c("max.message.bytes", Int, true, ""),
    c("message.timestamp.after.max.ms", Long, true, ""),
    c("message.timestamp.before.max.ms", Long, true, ""),
    c("message.timestamp.type", Text, true, "CreateTime"),
    c("min.cleanable.dirty.ratio", Double, false, "0.5"),
    c("min.compaction.lag.ms", Long, false, "0"),
    c("min.insync.replicas", Int, true, "1"),
    c("preallocate", Boolean, false, "false"),
    c("remote.log.copy.disable", Boolean, false, "false"),
    c("remote.log.delete.on.disable", Boolean, false, "false"),
    c("remote.storage.enable", Boolean, false, "false"),
    c("retention.bytes", Long, true, ""),
    c("retention.ms", Long, true, ""),
    c("segment.bytes", Int, true, ""),
    c("segment.index.bytes", Int, false, "10485760"),
    c("segment.jitter.ms", Long, false, "0"),
    c("segment.ms", Long, true, ""),
    c("unclean.leader.election.enable", Boolean, false, "false"),
];

pub fn find(name: &str) -> Option<&'static TopicConfig> {
    TOPIC_CONFIGS.iter().find(|t| t.name == name)
}

/// The value of a topic config when the topic has no override.
pub fn default(cfg: &Config, name: &str) -> Option<String> {
    Some(match name {
        "retention.ms" => cfg.retention_ms.unwrap_or(-1).to_string(),
        "retention.bytes" => cfg.retention_bytes.map_or(-1, |b| b as i64).to_string(),
        "segment.bytes" => cfg.segment_bytes.to_string(),
        "segment.ms" => cfg.segment_ms.unwrap_or(7 * 24 * 3600 * 1000).to_string(),
        "max.message.bytes" => cfg.max_message_bytes.to_string(),
        "message.timestamp.before.max.ms" => cfg.message_timestamp_before_max_ms.to_string(),
        "message.timestamp.after.max.ms" => cfg.message_timestamp_after_max_ms.to_string(),
        other => find(other)?.kafka_default.to_string(),
    })
}

/// What DescribeConfigs says of a config corelog stores but does not act on.
pub fn note(name: &str) -> Option<&'static str> {
    match find(name) {
        Some(t) if t.name == "compression.lz4.level" => Some(
            "Accepted and stored for compatibility; corelog recompresses to lz4 at its one fast level (no LZ4 HC levels).",
        ),
        Some(t) if !t.acted => {
            Some("Accepted and stored for compatibility; corelog does not act on this setting yet.")
        }
        _ => None,
    }
}

/// Checks one value; the error text goes back to the client (INVALID_CONFIG).
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let Some(t) = find(name) else {
        return Err(format!("unknown topic config {name:?}"));
    };
    let int = |min: i64, max: i64| -> Result<(), String> {
        match value.parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(()),
            _ => Err(format!(
                "{name} must be an integer in [{min}, {max}], not {value:?}"
            )),
        }
    };
    match name {
        "cleanup.policy" => {
            return if value.split(',').map(str::trim).all(|p| p == "delete") && !value.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "cleanup.policy={value} is not supported (corelog has no log compaction yet; only delete)"
                ))
            };
        }
        // Kafka's ranges (KIP-390); gzip's -1 is its own default level.
        "compression.gzip.level" if value.trim() == "-1" => return Ok(()),
        "compression.gzip.level" => return int(1, 9),
        "compression.lz4.level" => return int(1, 17),
        "compression.zstd.level" => return int(-131_072, 22),
        "retention.ms" | "retention.bytes" => return int(-1, i64::MAX),
        "segment.bytes" => return int(14 * 1024, i64::from(i32::MAX)),
        "segment.ms" => return int(1, i64::MAX),
        "max.message.bytes" => return int(0, i64::from(i32::MAX)),
        "message.timestamp.before.max.ms" | "message.timestamp.after.max.ms" => {
            return int(0, i64::MAX);
        }
        "message.timestamp.type" => {
            return match value {
                "CreateTime" => Ok(()),
                "LogAppendTime" => Err(
                    "message.timestamp.type=LogAppendTime is not supported (only CreateTime)"
                        .into(),
                ),
                _ => Err(format!(
                    "message.timestamp.type must be CreateTime, not {value:?}"
                )),
            };
        }
        "min.insync.replicas" => {
            return if value == "1" {
                Ok(())
            } else {
                Err("min.insync.replicas must be 1 on a single broker".into())
            };
        }
        "compression.type" => {
            return match value {
                "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd" => Ok(()),
                _ => Err(format!(
                    "compression.type must be one of producer, uncompressed, gzip, snappy, lz4, zstd; not {value:?}"
                )),
            };
        }
        _ => {}
    }
    match t.kind {
        Boolean if value == "true" || value == "false" => Ok(()),
        Boolean => Err(format!("{name} must be true or false, not {value:?}")),
        Int => int(i64::from(i32::MIN), i64::from(i32::MAX)),
        Long => int(i64::MIN, i64::MAX),
        Double => value
            .parse::<f64>()
            .map(|_| ())
            .map_err(|_| format!("{name} must be a number, not {value:?}")),
        Text | List => Ok(()),
    }
}

/// IncrementalAlterConfigs on one key of `configs`: 0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT
/// (the last two for list-valued configs, on the comma-separated current value).
pub fn apply_op(
    cfg: &Config,
    configs: &mut std::collections::BTreeMap<String, String>,
    name: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), String> {
    let list = find(name).is_some_and(|t| t.kind == List);
    match (op, value) {
        (0, Some(v)) => {
            configs.insert(name.to_string(), v.to_string());
        }
        (0, None) => return Err(format!("SET of {name} without a value")),
        (1, _) => {
            configs.remove(name);
        }
        (2 | 3, _) if !list => {
            return Err(format!(
                "APPEND/SUBTRACT need a list-valued config; {name} is not one"
            ));
        }
        (2 | 3, Some(v)) => {
            let current = configs
                .get(name)
                .cloned()
                .or_else(|| default(cfg, name))
                .unwrap_or_default();
            let mut items: Vec<String> = current
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if op == 2 {
                    if !items.iter().any(|i| i == item) {
                        items.push(item.to_string());
                    }
                } else {
                    items.retain(|i| i != item);
                }
            }
            configs.insert(name.to_string(), items.join(","));
        }
        (2 | 3, None) => return Err(format!("APPEND/SUBTRACT of {name} without a value")),
        (op, _) => return Err(format!("unknown config operation {op}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/topic-configs.md names every config under the heading the table puts it.
    #[test]
    fn the_docs_say_which_configs_are_acted_on() {
        let doc = include_str!("../../docs/topic-configs.md");
        let (acted, stored) = doc
            .split_once("## Accepted and stored, not acted on")
            .expect("both sections");
        for t in TOPIC_CONFIGS {
            let name = format!("`{}`", t.name);
            let (here, there) = if t.acted {
                (acted, stored)
            } else {
                (stored, acted)
            };
            assert!(here.contains(&name), "{} missing from its section", t.name);
            assert!(!there.contains(&name), "{} in the wrong section", t.name);
        }
    }
    use std::collections::BTreeMap;

    #[test]
    fn every_kafka_topic_config_is_known_and_typed() {
        assert_eq!(TOPIC_CONFIGS.len(), 33);
        let cfg = Config::default();
        for t in TOPIC_CONFIGS {
            assert!(default(&cfg, t.name).is_some(), "{}", t.name);
        }
        assert!(validate("preallocate", "true").is_ok());
        assert!(validate("preallocate", "yes").is_err());
        assert!(validate("min.cleanable.dirty.ratio", "0.7").is_ok());
        assert!(validate("segment.jitter.ms", "x").is_err());
        assert!(validate("bogus.config", "1").is_err());
        assert!(validate("cleanup.policy", "compact").is_err());
        assert!(note("preallocate").is_some() && note("retention.ms").is_none());
    }

    #[test]
    fn append_and_subtract_on_list_configs() {
        let cfg = Config::default();
        let mut m = BTreeMap::new();
        let key = "leader.replication.throttled.replicas";
        apply_op(&cfg, &mut m, key, 2, Some("0:1")).unwrap();
        apply_op(&cfg, &mut m, key, 2, Some("1:1,0:1")).unwrap();
        assert_eq!(m[key], "0:1,1:1");
        apply_op(&cfg, &mut m, key, 3, Some("0:1")).unwrap();
        assert_eq!(m[key], "1:1");
        assert!(apply_op(&cfg, &mut m, "retention.ms", 2, Some("5")).is_err());
        apply_op(&cfg, &mut m, key, 1, None).unwrap();
        assert!(m.is_empty());
    }
}
