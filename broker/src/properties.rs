//! `corelog serve --config server.properties`: Kafka's own file format and key names, for
//! everything corelog has. Keys corelog does not know, or knows but has no use for, are
//! warned about by name and never fatal, so an existing Kafka config starts a broker.

use crate::config::Config;

/// Keys of Kafka's broker config that corelog accepts but does not need (threads, KRaft
/// roles, the group/transaction internals it runs its own way).
const IGNORED: &[&str] = &[
    "process.roles",
    "controller.quorum.voters",
    "controller.quorum.bootstrap.servers",
    "controller.listener.names",
    "inter.broker.listener.name",
    "listener.security.protocol.map",
    "num.network.threads",
    "num.io.threads",
    "num.recovery.threads.per.data.dir",
    "num.replica.fetchers",
    "background.threads",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "group.initial.rebalance.delay.ms",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "zookeeper.connect",
    "zookeeper.connection.timeout.ms",
    "offsets.topic.num.partitions",
    "log.cleaner.enable",
    "delete.topic.enable",
];

/// Parses Java properties text (`key=value`, `key: value` or `key value`; `#`/`!`
/// comments; trailing-backslash continuations) into ordered pairs. A value's trailing
/// ` # comment` is dropped too: Kafka would choke on it, but such lines are common in
/// documentation (corelog's seeds have them).
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim_start();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        let split = entry
            .find(|c: char| c == '=' || c == ':' || c.is_whitespace())
            .unwrap_or(entry.len());
        let key = entry[..split].trim().to_string();
        let mut value = entry[split..].trim_start();
        if let Some(v) = value.strip_prefix(['=', ':']) {
            value = v;
        }
        let value = match value.find(" #").or_else(|| value.find("\t#")) {
            Some(i) => &value[..i],
            None => value,
        };
        out.push((key, value.trim().to_string()));
    }
    out
}

/// `PLAINTEXT://host:port[,NAME://...]` -> the first `host:port` (an empty host means all
/// interfaces, as in Kafka).
fn listener(v: &str) -> Result<String, String> {
    let first = v.split(',').next().unwrap_or("").trim();
    let addr = first.split_once("://").map_or(first, |(_, a)| a);
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("listener {first:?} has no port"))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok(format!("{host}:{port}"))
}

/// Applies Kafka properties to `cfg`; returns the warnings to log (unknown or unused
/// keys, values capped to what one node can do). A malformed value of a known key is an
/// error, as in Kafka.
pub fn apply(cfg: &mut Config, pairs: &[(String, String)]) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let mut retention = (None, None, None); // ms, minutes, hours: the most precise wins
    let mut roll = (None, None);
    for (key, value) in pairs {
        let int = || -> Result<i64, String> {
            value
                .parse::<i64>()
                .map_err(|_| format!("{key}={value}: not an integer"))
        };
        let positive = || -> Result<u64, String> {
            value
                .parse::<u64>()
                .map_err(|_| format!("{key}={value}: not a non-negative integer"))
        };
        match key.as_str() {
            "node.id" | "broker.id" => cfg.node_id = int()? as i32,
            "listeners" => cfg.listen = listener(value)?,
            "advertised.listeners" => cfg.advertised_listener = Some(listener(value)?),
            "log.dirs" | "log.dir" => {
                let mut dirs = value.split(',').map(str::trim);
                cfg.data_dir = dirs.next().unwrap_or_default().into();
                if dirs.next().is_some() {
                    warnings.push(format!(
                        "{key}: corelog uses one data dir; using {}",
                        cfg.data_dir.display()
                    ));
                }
            }
            "num.partitions" => cfg.default_partitions = int()? as i32,
            "default.replication.factor" => {
                cfg.default_replication_factor = int()?.clamp(1, 1000) as i16;
            }
            "offsets.topic.replication.factor" => {
                warnings.push(format!(
                    "{key}={value}: corelog gives the offsets topic min(3, brokers) replicas"
                ));
            }
            "controller.quorum.voters" => cfg.voters = vec![value.clone()],
            "log.retention.ms" => retention.0 = Some(int()?),
            "log.retention.minutes" => retention.1 = Some(int()?),
            "log.retention.hours" => retention.2 = Some(int()?),
            "log.retention.bytes" => {
                cfg.retention_bytes = u64::try_from(int()?).ok();
            }
            "log.segment.bytes" => cfg.segment_bytes = positive()?,
            "log.roll.ms" => roll.0 = Some(int()?),
            "log.roll.hours" => roll.1 = Some(int()?),
            "log.retention.check.interval.ms" => cfg.retention_check_interval_ms = positive()?,
            "message.max.bytes" => cfg.max_message_bytes = positive()? as usize,
            "socket.request.max.bytes" => cfg.max_request_bytes = positive()? as usize,
            "queued.max.request.bytes" => {
                // Kafka's -1 means unbounded; corelog keeps a bound.
                if let Ok(v) = u64::try_from(int()?) {
                    cfg.queued_max_request_bytes = v;
                }
            }
            // Redpanda's name for the disk reserve; corelog's own key in TOML.
            "storage_min_free_bytes" | "storage.min.free.bytes" => {
                cfg.storage_min_free_bytes = Some(positive()?)
            }
            "connections.max.idle.ms" => cfg.connections_max_idle_ms = positive()?,
            "max.connections.per.ip" => cfg.max_connections_per_ip = positive()? as usize,
            "auto.create.topics.enable" => {
                cfg.auto_create_topics = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("{key}={value}: not true or false")),
                }
            }
            "log.message.timestamp.before.max.ms" => cfg.message_timestamp_before_max_ms = int()?,
            "log.message.timestamp.after.max.ms" => cfg.message_timestamp_after_max_ms = int()?,
            k if IGNORED.contains(&k) => warnings.push(format!(
                "{k}: a Kafka setting corelog does not use; ignored"
            )),
            k => warnings.push(format!("{k}: unknown setting; ignored")),
        }
    }
    const HOUR: i64 = 3_600_000;
    if let Some(ms) = retention
        .0
        .or(retention.1.map(|m| m * 60_000))
        .or(retention.2.map(|h| h * HOUR))
    {
        cfg.retention_ms = (ms >= 0).then_some(ms);
    }
    if let Some(ms) = roll.0.or(roll.1.map(|h| h * HOUR)) {
        cfg.segment_ms = Some(ms.max(1));
    }
    if cfg.default_replication_factor > 1 && !cfg.clustered() {
        warnings.push(format!(
            "default.replication.factor={}: this broker has no peers (no controller.quorum.voters), so data is kept on this node only",
            cfg.default_replication_factor
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_lines_with_their_trailing_comments() {
        let text = "# server.properties\n\
            num.partitions=3                    # Default partitions per topic\n\
            default.replication.factor=2        # Replication for fault tolerance\n\
            log.retention.hours=168             # Keep messages for 7 days\n\
            log.segment.bytes=1073741824        # 1GB segments\n";
        let mut cfg = Config::default();
        let warnings = apply(&mut cfg, &parse(text)).unwrap();
        assert_eq!(cfg.default_partitions, 3);
        assert_eq!(cfg.retention_ms, Some(168 * 3_600_000));
        assert_eq!(cfg.segment_bytes, 1 << 30);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("default.replication.factor"));
    }

    #[test]
    fn kafka_keys_formats_and_precedence() {
        let text = "node.id=7\nlisteners=PLAINTEXT://:19092,CONTROLLER://:19093\n\
            advertised.listeners = PLAINTEXT://broker-7.example:19092\n\
            log.dirs=/var/lib/kafka,/mnt/other\nlog.retention.hours=1\nlog.retention.ms=5000\n\
            log.retention.bytes=-1\nmessage.max.bytes: 2000000\nauto.create.topics.enable false\n\
            num.io.threads=8\nsome.plugin.setting=\\\n  continued\nlog.roll.hours=2\n";
        let mut cfg = Config::default();
        let warnings = apply(&mut cfg, &parse(text)).unwrap();
        assert_eq!(cfg.node_id, 7);
        assert_eq!(cfg.listen, "0.0.0.0:19092");
        assert_eq!(cfg.advertised(), ("broker-7.example".to_string(), 19092));
        assert_eq!(cfg.data_dir, std::path::PathBuf::from("/var/lib/kafka"));
        assert_eq!(
            cfg.retention_ms,
            Some(5000),
            "log.retention.ms wins over hours"
        );
        assert_eq!(cfg.retention_bytes, None);
        assert_eq!(cfg.max_message_bytes, 2_000_000);
        assert!(!cfg.auto_create_topics);
        assert_eq!(cfg.segment_ms, Some(2 * 3_600_000));
        let joined = warnings.join("\n");
        assert!(joined.contains("num.io.threads"), "{joined}");
        assert!(joined.contains("some.plugin.setting: unknown"), "{joined}");
        assert!(joined.contains("log.dirs"), "{joined}");
        assert!(apply(&mut cfg, &parse("num.partitions=three")).is_err());
    }
}
