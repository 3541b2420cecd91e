//! Broker configuration: embedded defaults, a TOML file (`--config`), then flags.

use std::path::{Path, PathBuf};

use corelog_storage::LogConfig;
use serde::Deserialize;

/// Everything `corelog serve` can be told. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the Kafka listener binds (every shard binds it, SO_REUSEPORT).
    pub listen: String,
    /// `host:port` clients are told to connect to (Metadata); defaults to `listen`.
    pub advertised_listener: Option<String>,
    /// Kafka's `listeners`: `NAME://HOST:PORT` each, a list or one comma-separated
    /// string; the name is the protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL) unless
    /// `listener_security_protocol_map` maps it to one. When set, it replaces `listen`.
    #[serde(deserialize_with = "one_or_many")]
    pub listeners: Vec<String>,
    /// Kafka's `listener.security.protocol.map`: `NAME:PROTOCOL` each (e.g.
    /// `INTERNAL:SASL_SSL`), for listeners not named by their protocol.
    #[serde(deserialize_with = "one_or_many")]
    pub listener_security_protocol_map: Vec<String>,
    /// Kafka's `advertised.listeners`: what each listener (by name) tells clients to
    /// connect to; a listener not named here advertises its own address.
    #[serde(deserialize_with = "one_or_many")]
    pub advertised_listeners: Vec<String>,
    /// Certificate, key and client-certificate checks of the SSL and SASL_SSL listeners.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Mechanisms and users of the SASL_PLAINTEXT and SASL_SSL listeners.
    pub sasl: Option<crate::sasl::SaslConfig>,
    /// ACL enforcement (off by default), super users.
    pub authorization: crate::acl::AuthorizationConfig,
    pub data_dir: PathBuf,
    /// Executors (one per core, pinned); defaults to the number of cores.
    pub shards: Option<usize>,
    /// CPUs the shards are pinned to, as `0,2-3` (Redpanda's `--cpuset`); defaults to
    /// the CPUs this process may run on, so `taskset -c 1 corelog serve` works too.
    pub cpuset: Option<String>,
    pub node_id: i32,
    /// Address the broker-to-broker (replication) listener binds; required with `voters`.
    pub rpc_listen: Option<String>,
    /// Address of the HTTP listener for `GET /metrics` (Prometheus), `/health` and
    /// `/ready`; off unless set (e.g. `127.0.0.1:9644`).
    pub metrics_listen: Option<String>,
    /// The cluster's initial members: `ID@HOST:PORT` of each broker's RPC listener, this
    /// broker's among them (KRaft's `controller.quorum.voters`). Empty, or this broker
    /// alone: a single-node broker.
    #[serde(deserialize_with = "one_or_many")]
    pub voters: Vec<String>,
    /// A file holding the cluster's shared secret (at least 16 bytes; the same file on
    /// every broker): a broker proves it knows it when it connects to a peer's RPC
    /// listener, so a host without it cannot join or inject replication traffic.
    pub cluster_secret_file: Option<PathBuf>,
    /// Mutual TLS on the RPC links between brokers, with the `[tls]` certificate and key,
    /// peers' certificates checked against `tls.ca` (Kafka: `security.inter.broker.protocol=SSL`).
    pub rpc_tls: bool,
    /// Replicas of topics created without a replication factor (`-1`), capped at the
    /// number of brokers (Kafka's `default.replication.factor`).
    pub default_replication_factor: i16,
    /// Largest record batch accepted (Kafka `message.max.bytes`).
    pub max_message_bytes: usize,
    /// Largest request frame read from a socket (Kafka `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// Open client connections per shard; more are closed at once.
    pub max_connections_per_shard: usize,
    /// Requests of one connection decoded but not yet answered; reading pauses beyond.
    pub max_inflight_requests: usize,
    /// Request bytes being read or awaiting their answer, broker-wide (Kafka
    /// `queued.max.request.bytes`), split evenly over the shards; each shard gets at least
    /// `max_request_bytes`. Readers wait while it is spent.
    pub queued_max_request_bytes: u64,
    /// A connection with no bytes from its client for this long is closed (Kafka
    /// `connections.max.idle.ms`).
    pub connections_max_idle_ms: u64,
    /// Open connections per client address, across the broker (Kafka
    /// `max.connections.per.ip`); more are closed at once.
    pub max_connections_per_ip: usize,
    /// A request frame must arrive whole within this long after its length prefix: a
    /// client trickling bytes (slowloris) is closed instead of holding its buffer forever.
    pub request_read_timeout_ms: u64,
    /// Create a topic when a client asks for its metadata (Kafka `auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics without a count (`num.partitions`).
    pub default_partitions: i32,
    /// How far before the broker's clock a record's CreateTime may be (Kafka
    /// `log.message.timestamp.before.max.ms`; default: any).
    pub message_timestamp_before_max_ms: i64,
    /// How far after it (Kafka 4's `log.message.timestamp.after.max.ms`, one hour): a
    /// record from the future would hold back time retention of every later segment.
    pub message_timestamp_after_max_ms: i64,
    /// Free bytes the data dir's file system keeps: below it produce requests are refused
    /// (offset commits keep writing down to a quarter of it). Default: 1 GiB or 2% of the
    /// file system, whichever is smaller (like Redpanda's `storage_min_free_bytes`).
    pub storage_min_free_bytes: Option<u64>,
    /// Roll a segment after this long even if not full (Kafka `log.roll.ms`; default 7 days).
    pub segment_ms: Option<i64>,
    /// Topic defaults (`log.segment.bytes`, `log.retention.ms`, `log.retention.bytes`).
    pub segment_bytes: u64,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<u64>,
    /// How often each partition applies its retention limits.
    pub retention_check_interval_ms: u64,
    /// A consumer-offsets partition is compacted (a snapshot of its latest offsets
    /// written, older segments dropped) once it holds this many bytes.
    pub offsets_compact_bytes: u64,
}

/// A TOML list of strings, or one string (comma-separated voters, as on the command line).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9092".into(),
            advertised_listener: None,
            listeners: Vec::new(),
            listener_security_protocol_map: Vec::new(),
            advertised_listeners: Vec::new(),
            tls: None,
            sasl: None,
            authorization: Default::default(),
            data_dir: PathBuf::from("./corelog-data"),
            shards: None,
            cpuset: None,
            node_id: 1,
            rpc_listen: None,
            metrics_listen: None,
            voters: Vec::new(),
            cluster_secret_file: None,
            rpc_tls: false,
            default_replication_factor: 1,
            max_message_bytes: 1_048_588,
            max_request_bytes: 100 * 1024 * 1024,
            max_connections_per_shard: 10_000,
            max_inflight_requests: 64,
            queued_max_request_bytes: 256 << 20,
            connections_max_idle_ms: 600_000,
            max_connections_per_ip: 1000,
            request_read_timeout_ms: 60_000,
            auto_create_topics: true,
            message_timestamp_before_max_ms: i64::MAX,
            message_timestamp_after_max_ms: 3_600_000,
            default_partitions: 1,
            segment_bytes: 1 << 30,
            segment_ms: None,
            storage_min_free_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            retention_check_interval_ms: 60_000,
            offsets_compact_bytes: 32 << 20,
        }
    }
}

impl Config {
    /// Reads a config file: Kafka's `server.properties` format (a `.properties` file, or
    /// any file that is not TOML) or corelog's TOML. Returns the warnings to log.
    pub fn from_file(path: &Path) -> Result<(Self, Vec<String>), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        let is_properties = path.extension().is_some_and(|e| e == "properties");
        if !is_properties {
            match toml::from_str(&text) {
                Ok(cfg) => return Ok((cfg, Vec::new())),
                // A file named .toml is TOML: its error is the one to show.
                Err(e) if path.extension().is_some_and(|e| e == "toml") => {
                    return Err(format!("config {}: {e}", path.display()));
                }
                Err(_) => {}
            }
        }
        let mut cfg = Self::default();
        let warnings = crate::properties::apply(&mut cfg, &crate::properties::parse(&text))
            .map_err(|e| format!("config {}: {e}", path.display()))?;
        Ok((cfg, warnings))
    }

    /// One shard's share of `queued_max_request_bytes` (never less than one whole frame).
    pub fn shard_request_budget(&self, shards: usize) -> u64 {
        (self.queued_max_request_bytes / shards.max(1) as u64).max(self.max_request_bytes as u64)
    }

    pub fn shard_count(&self) -> usize {
        self.shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// The CPUs the shards may be pinned to: `cpuset` if given, else the process's
    /// affinity mask. Checked against the shard count, which glommio needs one CPU each.
    pub fn cpu_list(&self) -> Result<Vec<usize>, String> {
        let cpus = match &self.cpuset {
            Some(spec) => parse_cpuset(spec)?,
            None => {
                let mask = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
                    .map_err(|e| format!("cannot read this process's CPU affinity: {e}"))?;
                (0..nix::sched::CpuSet::count())
                    .filter(|&c| mask.is_set(c).unwrap_or(false))
                    .collect()
            }
        };
        let shards = self.shard_count();
        if cpus.len() < shards {
            return Err(format!(
                "{shards} shards need as many CPUs, but the cpuset has {} ({cpus:?})",
                cpus.len()
            ));
        }
        Ok(cpus)
    }

    /// (host, port) announced to clients of the first listener (the one a cluster
    /// registers for this broker).
    pub fn advertised(&self) -> (String, i32) {
        match self.listener_list() {
            Ok(l) if !l.is_empty() => l[0].advertised.clone(),
            _ => host_port(self.advertised_listener.as_deref().unwrap_or(&self.listen)),
        }
    }

    /// (host, port) announced to clients that came in through listener `index`.
    pub fn advertised_for(&self, index: usize) -> (String, i32) {
        match self.listener_list() {
            Ok(l) if index < l.len() => l[index].advertised.clone(),
            _ => self.advertised(),
        }
    }

    /// The Kafka listeners, checked: `listeners` if given, else one PLAINTEXT listener
    /// on `listen`.
    pub fn listener_list(&self) -> Result<Vec<Listener>, String> {
        if self.listeners.is_empty() {
            let adv = self.advertised_listener.as_deref().unwrap_or(&self.listen);
            return Ok(vec![Listener {
                name: "PLAINTEXT".into(),
                protocol: Protocol::Plaintext,
                addr: self.listen.clone(),
                advertised: host_port(adv),
            }]);
        }
        let entries = |list: &[String]| -> Result<Vec<(String, String)>, String> {
            let mut out: Vec<(String, String)> = Vec::new();
            for one in list
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                let (name, addr) = one.split_once("://").ok_or_else(|| {
                    format!("listener {one:?} is not NAME://HOST:PORT (e.g. SSL://0.0.0.0:9093)")
                })?;
                let (host, port) = addr
                    .rsplit_once(':')
                    .ok_or_else(|| format!("listener {one:?} has no port"))?;
                port.parse::<u16>()
                    .map_err(|_| format!("listener {one:?}: bad port"))?;
                let host = if host.is_empty() { "0.0.0.0" } else { host };
                let name = name.to_ascii_uppercase();
                if out.iter().any(|(n, _)| *n == name) {
                    return Err(format!("listener {name} is given twice"));
                }
                out.push((name, format!("{host}:{port}")));
            }
            Ok(out)
        };
        let advertised = entries(&self.advertised_listeners)?;
        let mut out = Vec::new();
        for (name, addr) in entries(&self.listeners)? {
            let mapped = self
                .listener_security_protocol_map
                .iter()
                .flat_map(|v| v.split(','))
                .filter_map(|p| p.split_once(':'))
                .filter(|(n, _)| n.trim().eq_ignore_ascii_case(&name))
                .map(|(_, p)| p.trim().to_ascii_uppercase())
                .next_back()
                .unwrap_or_else(|| name.clone());
            let protocol = match mapped.as_str() {
                "PLAINTEXT" => Protocol::Plaintext,
                "SSL" => Protocol::Ssl,
                "SASL_PLAINTEXT" => Protocol::SaslPlaintext,
                "SASL_SSL" => Protocol::SaslSsl,
                _ => {
                    return Err(format!(
                        "listener {name}: its protocol {mapped:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (name it by its protocol, or map it in listener_security_protocol_map)"
                    ));
                }
            };
            let adv = advertised
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(addr.as_str(), |(_, a)| a.as_str());
            out.push(Listener {
                advertised: host_port(adv),
                name,
                protocol,
                addr,
            });
        }
        if let Some((n, _)) = advertised
            .iter()
            .find(|(n, _)| !out.iter().any(|l| l.name == *n))
        {
            return Err(format!("advertised listener {n} names no listener"));
        }
        if out.is_empty() {
            return Err("listeners is empty".into());
        }
        Ok(out)
    }

    /// The voters as (node id, RPC address), checked: ids positive and distinct, this
    /// broker among them with its `rpc_listen`.
    pub fn voter_list(&self) -> Result<Vec<(u32, String)>, String> {
        let mut out: Vec<(u32, String)> = Vec::new();
        for v in &self.voters {
            for one in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (id, addr) = one.split_once('@').ok_or_else(|| {
                    format!("voter {one:?} is not ID@HOST:PORT (e.g. 1@127.0.0.1:9192)")
                })?;
                let id: u32 = id
                    .parse()
                    .ok()
                    .filter(|i| *i > 0 && *i < i32::MAX as u32)
                    .ok_or_else(|| format!("voter {one:?}: the id must be a positive integer"))?;
                if !addr
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                {
                    return Err(format!("voter {one:?}: {addr:?} is not HOST:PORT"));
                }
                if out.iter().any(|(i, _)| *i == id) {
                    return Err(format!("voter id {id} appears twice"));
                }
                out.push((id, addr.to_string()));
            }
        }
        if out.len() > 1 {
            let me = out
                .iter()
                .find(|(i, _)| *i as i32 == self.node_id)
                .ok_or_else(|| format!("node_id {} is not among the voters", self.node_id))?;
            if self.rpc_listen.is_none() {
                return Err(format!(
                    "a cluster member needs rpc_listen (its voter entry says {})",
                    me.1
                ));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The cluster secret's bytes (the file's, without trailing whitespace), if one is set.
    pub fn cluster_secret(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = &self.cluster_secret_file else {
            return Ok(None);
        };
        let mut bytes =
            std::fs::read(path).map_err(|e| format!("cluster secret {}: {e}", path.display()))?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        if bytes.len() < 16 {
            return Err(format!(
                "cluster secret {}: at least 16 bytes, please (e.g. `openssl rand -hex 32 > FILE`)",
                path.display()
            ));
        }
        Ok(Some(bytes))
    }

    /// Whether this broker is one of several (a cluster), not a single node.
    pub fn clustered(&self) -> bool {
        self.voter_list().is_ok_and(|v| v.len() > 1)
    }

    pub fn check(&self) -> Result<(), String> {
        self.voter_list()?;
        self.cluster_secret()?;
        if self.rpc_tls {
            let t = self
                .tls
                .as_ref()
                .ok_or("rpc_tls needs [tls] certificate, key and ca")?;
            t.load_rpc()?;
            // The CA may sign clients' certificates too: a certificate alone must not make
            // a host a broker, so the secret is required beside it.
            if self.cluster_secret_file.is_none() {
                return Err("rpc_tls needs cluster_secret_file as well: a client certificate of the same CA must not be enough to join the cluster".into());
            }
        }
        let listeners = self.listener_list()?;
        if listeners.iter().any(|l| l.protocol.tls()) {
            match &self.tls {
                None => return Err("an SSL listener needs [tls] certificate and key".into()),
                Some(t) => {
                    t.load()?;
                }
            }
        }
        if listeners.iter().any(|l| l.protocol.sasl()) {
            // Users may also come from the metadata (made through the API): whether
            // anyone can log in at all is checked at start, with the metadata at hand.
            if let Some(sasl) = &self.sasl {
                sasl.mechanisms()?;
            }
        }
        if listeners.len() > 1 && self.clustered() {
            // Each broker registers one Kafka address with the controller today; a client
            // on a second listener would be sent to the first listener of other brokers.
            return Err(
                "a cluster member has one listener for now (PLAINTEXT or SSL), not several".into(),
            );
        }
        if self.node_id < 0 {
            return Err("node_id must not be negative".into());
        }
        if self.default_replication_factor < 1 {
            return Err("default_replication_factor must be at least 1".into());
        }
        if self.default_partitions < 1 {
            return Err("default_partitions must be at least 1".into());
        }
        if self.max_message_bytes < 61 || self.max_message_bytes > self.max_request_bytes {
            return Err("max_message_bytes must be >= 61 and <= max_request_bytes".into());
        }
        if self.max_connections_per_ip == 0 || self.request_read_timeout_ms == 0 {
            return Err(
                "max_connections_per_ip and request_read_timeout_ms must be positive".into(),
            );
        }
        Ok(())
    }
}

/// The topic configs corelog acts on (a subset of `topic_configs::TOPIC_CONFIGS`).
pub fn topic_default(cfg: &Config, key: &str) -> Option<String> {
    crate::topic_configs::default(cfg, key)
}

/// The effective settings of one topic.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    pub log: LogConfig,
    pub max_message_bytes: usize,
    /// How far a record's CreateTime may lie before / after the broker's clock.
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
    /// `compression.type` other than `producer`: batches in another codec are
    /// recompressed to this one before they are stored.
    pub compression: Option<crate::records::Recompress>,
}

pub fn topic_settings(
    cfg: &Config,
    overrides: &std::collections::BTreeMap<String, String>,
) -> TopicSettings {
    let get = |k: &str| {
        overrides
            .get(k)
            .cloned()
            .or_else(|| topic_default(cfg, k))
            .unwrap_or_default()
    };
    let opt_i64 = |k: &str| get(k).parse::<i64>().ok().filter(|v| *v >= 0);
    let max_message_bytes = get("max.message.bytes")
        .parse()
        .unwrap_or(cfg.max_message_bytes);
    let log = LogConfig {
        segment_bytes: get("segment.bytes").parse().unwrap_or(cfg.segment_bytes),
        segment_ms: opt_i64("segment.ms"),
        retention_bytes: opt_i64("retention.bytes").map(|v| v as u64),
        retention_ms: opt_i64("retention.ms"),
        // Storage refuses anything larger; the broker checks max.message.bytes first
        // so the client gets MESSAGE_TOO_LARGE.
        max_batch_bytes: max_message_bytes.max(61),
        // Reserving a whole 1 GiB segment per partition up front would make every topic
        // cost a gigabyte of disk; extents are allocated as the log grows instead.
        preallocate: false,
        ..LogConfig::default()
    };
    let ms = |k: &str, default: i64| {
        get(k)
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .unwrap_or(default)
    };
    let level = |k: &str, default: i32| get(k).parse::<i32>().unwrap_or(default);
    let compression = match get("compression.type").as_str() {
        "uncompressed" => Some((0, 0)),
        "gzip" => Some((1, level("compression.gzip.level", -1))),
        "snappy" => Some((2, 0)),
        "lz4" => Some((3, level("compression.lz4.level", 9))),
        "zstd" => Some((4, level("compression.zstd.level", 3))),
        _ => None, // producer
    }
    .map(|(codec, level)| crate::records::Recompress { codec, level });
    TopicSettings {
        log,
        max_message_bytes,
        compression,
        timestamp_before_max_ms: ms(
            "message.timestamp.before.max.ms",
            cfg.message_timestamp_before_max_ms,
        ),
        timestamp_after_max_ms: ms(
            "message.timestamp.after.max.ms",
            cfg.message_timestamp_after_max_ms,
        ),
    }
}

/// `0,2-3` → [0, 2, 3].
pub fn parse_cpuset(spec: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("cpuset {spec:?} is not a list like 0,2-3");
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a > b || b >= 4096 {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn listeners_are_checked_and_advertised_by_name() {
        let cfg = |l: &[&str], a: &[&str]| Config {
            listeners: l.iter().map(|s| s.to_string()).collect(),
            advertised_listeners: a.iter().map(|s| s.to_string()).collect(),
            ..Config::default()
        };
        let ok = cfg(
            &["PLAINTEXT://127.0.0.1:9092,ssl://0.0.0.0:9093"],
            &["SSL://broker.example:19093"],
        )
        .listener_list()
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].protocol, Protocol::Ssl);
        assert_eq!(ok[1].addr, "0.0.0.0:9093");
        assert_eq!(ok[1].advertised, ("broker.example".to_string(), 19093));
        assert_eq!(ok[0].advertised, ("127.0.0.1".to_string(), 9092));
        for (l, a, why) in [
            (
                &["INTERNAL://:9094"][..],
                &[][..],
                "listener_security_protocol_map",
            ),
            (&["SSL://:9093", "SSL://:9094"][..], &[][..], "twice"),
            (
                &["SSL://:9093"][..],
                &["PLAINTEXT://h:1"][..],
                "names no listener",
            ),
            (&["SSL://nohost"][..], &[][..], "no port"),
        ] {
            let e = cfg(l, a).listener_list().unwrap_err();
            assert!(e.contains(why), "{l:?} {a:?}: {e}");
        }
        // No listeners: the one PLAINTEXT listener on `listen`, as before.
        let legacy = Config::default().listener_list().unwrap();
        assert_eq!(legacy[0].addr, "127.0.0.1:9092");
        assert_eq!(legacy[0].protocol, Protocol::Plaintext);
    }

    #[test]
    fn cluster_keys_in_toml_and_their_checks() {
        let one: Config = toml::from_str(
            "node_id = 2\nrpc_listen = \"127.0.0.1:9193\"\nvoters = \"1@127.0.0.1:9192,2@127.0.0.1:9193\"\n",
        )
        .unwrap();
        let many: Config = toml::from_str(
            "node_id = 2\nrpc_listen = \"127.0.0.1:9193\"\nvoters = [\"1@127.0.0.1:9192\", \"2@127.0.0.1:9193\"]\n",
        )
        .unwrap();
        assert_eq!(one.voter_list().unwrap(), many.voter_list().unwrap());
        assert!(one.clustered());
        assert!(Config::default().voter_list().unwrap().is_empty());
        let mut bad = one.clone();
        bad.node_id = 7;
        assert!(bad.check().unwrap_err().contains("not among the voters"));
        let mut bad = one.clone();
        bad.rpc_listen = None;
        assert!(bad.check().unwrap_err().contains("rpc_listen"));
        let mut bad = one;
        bad.voters = vec!["1@127.0.0.1:9192,1@127.0.0.1:9193".into()];
        assert!(bad.check().unwrap_err().contains("twice"));
    }

    use super::*;

    #[test]
    fn toml_file_overrides_defaults_and_rejects_unknown_keys() {
        let c: Config =
            toml::from_str("listen = \"127.0.0.1:9999\"\ndefault_partitions = 3\n").unwrap();
        assert_eq!(c.listen, "127.0.0.1:9999");
        assert_eq!(c.default_partitions, 3);
        assert!(c.auto_create_topics);
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
    }

    #[test]
    fn the_readme_config_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml example") + 8;
        let end = start + readme[start..].find("```").unwrap();
        let c: Config = toml::from_str(&readme[start..end]).unwrap();
        c.check().unwrap();
        assert_eq!(c.listen, "127.0.0.1:9092");
    }

    #[test]
    fn topic_overrides_reach_the_log_config() {
        let c = Config::default();
        let mut o = std::collections::BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        o.insert("retention.bytes".to_string(), "-1".to_string());
        let s = topic_settings(&c, &o);
        assert_eq!(s.log.retention_ms, Some(1000));
        assert_eq!(s.log.retention_bytes, None);
    }

    #[test]
    fn cpusets_parse_and_refuse_nonsense() {
        assert_eq!(parse_cpuset("0,2-3").unwrap(), vec![0, 2, 3]);
        assert_eq!(parse_cpuset("1").unwrap(), vec![1]);
        assert_eq!(parse_cpuset("3-3,1,1").unwrap(), vec![1, 3]);
        for bad in ["", "a", "3-1", "1-", "99999"] {
            assert!(parse_cpuset(bad).is_err(), "{bad:?}");
        }
    }
}

/// A Kafka listener's security protocol (Kafka's `listener.security.protocol.map`, with
/// each listener named by its protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    /// Whether connections start with a TLS handshake.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether clients must authenticate with SASL before any other request.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// One Kafka listener: where it binds, how it is secured, what it tells clients.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub protocol: Protocol,
    /// HOST:PORT to bind.
    pub addr: String,
    /// (host, port) Metadata names for this broker to clients of this listener.
    pub advertised: (String, i32),
}

/// `host:port` as announced: a wildcard host becomes loopback (a client cannot connect to
/// 0.0.0.0 elsewhere than here).
fn host_port(addr: &str) -> (String, i32) {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "9092"));
    let host = if host == "0.0.0.0" || host.is_empty() {
        "127.0.0.1"
    } else {
        host
    };
    (host.to_string(), port.parse().unwrap_or(9092))
}
