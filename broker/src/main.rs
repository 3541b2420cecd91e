//! `corelog`: the broker (`serve`) and its admin CLI (`topic`, `group`, `user`, `acl` ...).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use corelog_broker::admin::Client;
use corelog_broker::config::Config;

#[derive(Parser)]
#[command(
    name = "corelog",
    version,
    about = "A Kafka-compatible event streaming broker"
)]
struct Cli {
    /// Log lines as text (default) or as one JSON object each; RUST_LOG filters them.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start: the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Start a broker (defaults: 127.0.0.1:9092, data in ./corelog-data, one shard per core).
    Serve {
        /// Config file: Kafka's server.properties format or corelog's TOML; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// HOST:PORT to listen on.
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HOST:PORT clients are told to connect to (defaults to --listen).
        #[arg(long)]
        advertised_listener: Option<String>,
        /// Kafka listeners, comma-separated PROTOCOL://HOST:PORT (PLAINTEXT, SSL), e.g.
        /// PLAINTEXT://127.0.0.1:9092,SSL://0.0.0.0:9093; replaces --listen.
        #[arg(long)]
        listeners: Option<String>,
        /// What each listener tells clients, by name: SSL://broker1.example:9093,...
        #[arg(long)]
        advertised_listeners: Option<String>,
        /// PEM certificate chain of the SSL listeners (may hold the key too).
        #[arg(long)]
        tls_certificate: Option<PathBuf>,
        /// PEM private key of that certificate (default: the certificate file).
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// PEM CA certificates that client certificates must chain to.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Client certificates: none, requested or required (Kafka's ssl.client.auth).
        #[arg(long)]
        tls_client_auth: Option<corelog_broker::tls::ClientAuth>,
        /// Shards (pinned executors); defaults to the number of cores.
        #[arg(long)]
        shards: Option<usize>,
        /// CPUs to pin the shards to, e.g. 0,2-3; defaults to the CPUs this process may
        /// run on (its affinity: `taskset` works).
        #[arg(long)]
        cpuset: Option<String>,
        #[arg(long)]
        node_id: Option<i32>,
        /// HOST:PORT of the broker-to-broker (replication) listener.
        #[arg(long)]
        rpc_listen: Option<String>,
        /// HOST:PORT of the HTTP listener serving /metrics (Prometheus), /health and
        /// /ready; off unless given.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// The cluster's brokers: ID@HOST:PORT of each one's RPC listener, comma-separated
        /// (like KRaft's controller.quorum.voters). Omit for a single-node broker.
        #[arg(long)]
        voters: Option<String>,
        /// Replicas of topics created without a replication factor.
        #[arg(long)]
        default_replication_factor: Option<i16>,
        /// File holding the cluster's shared secret (the same on every broker): peers
        /// prove they know it when they connect to the RPC listener.
        #[arg(long)]
        cluster_secret_file: Option<PathBuf>,
        /// Mutual TLS between brokers with the --tls-certificate/--tls-key certificate,
        /// peers checked against --tls-ca.
        #[arg(long)]
        rpc_tls: bool,
    },
    /// Inspect consumer groups: members, assignments, committed offsets, lag.
    Group {
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Manage SASL/SCRAM users (like kafka-configs.sh --entity-type users).
    User {
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
        #[command(subcommand)]
        cmd: corelog_broker::security_cli::UserCmd,
    },
    /// Manage ACLs (like kafka-acls.sh).
    Acl {
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
        #[command(subcommand)]
        cmd: corelog_broker::security_cli::AclCmd,
    },
    /// Manage topics (like kafka-topics.sh).
    Topic {
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
        #[command(subcommand)]
        cmd: TopicCmd,
    },
    /// Run a local cluster of several brokers in one command (Kafka ports from 9092 up,
    /// data under ./corelog-dev); Ctrl-C stops them all.
    Dev {
        #[arg(long, default_value_t = 3)]
        brokers: u32,
        /// Kafka port of broker 1; broker N listens on PORT+N-1 (RPC on PORT+100+N-1).
        #[arg(long, default_value_t = 9092)]
        port: u16,
        #[arg(long, default_value = "./corelog-dev")]
        data_dir: PathBuf,
        /// Shards per broker (they share this machine's cores).
        #[arg(long, default_value_t = 1)]
        shards: usize,
    },
}

#[derive(Subcommand)]
enum TopicCmd {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication_factor: i16,
        /// A topic config as key=value (repeatable), e.g. --config retention.ms=60000.
        #[arg(long = "config", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions, offsets and configs.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// List consumer groups and their states.
    List,
    /// Members, assignments, committed offsets, log end offsets and lag per partition.
    Describe { name: String },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    let result = match cli.cmd {
        Cmd::Serve {
            config,
            listen,
            data_dir,
            advertised_listener,
            listeners,
            advertised_listeners,
            tls_certificate,
            tls_key,
            tls_ca,
            tls_client_auth,
            cluster_secret_file,
            rpc_tls,
            shards,
            cpuset,
            node_id,
            rpc_listen,
            metrics_listen,
            voters,
            default_replication_factor,
        } => (|| {
            let mut cfg = match config {
                Some(path) => {
                    let (cfg, warnings) = Config::from_file(&path)?;
                    for w in warnings {
                        tracing::warn!(config = %path.display(), "{w}");
                    }
                    cfg
                }
                None => Config::default(),
            };
            if let Some(v) = listen {
                cfg.listen = v;
            }
            if let Some(v) = data_dir {
                cfg.data_dir = v;
            }
            if let Some(v) = advertised_listener {
                cfg.advertised_listener = Some(v);
            }
            cfg.rpc_tls |= rpc_tls;
            if let Some(v) = cluster_secret_file {
                cfg.cluster_secret_file = Some(v);
            }
            if let Some(v) = listeners {
                cfg.listeners = vec![v];
            }
            if let Some(v) = advertised_listeners {
                cfg.advertised_listeners = vec![v];
            }
            if tls_certificate.is_some()
                || tls_key.is_some()
                || tls_ca.is_some()
                || tls_client_auth.is_some()
            {
                let t = cfg.tls.get_or_insert_with(Default::default);
                if let Some(v) = tls_certificate {
                    t.certificate = v;
                }
                if let Some(v) = tls_key {
                    t.key = Some(v);
                }
                if let Some(v) = tls_ca {
                    t.ca = Some(v);
                }
                if let Some(v) = tls_client_auth {
                    t.client_auth = v;
                }
            }
            if let Some(v) = shards {
                cfg.shards = Some(v);
            }
            if let Some(v) = cpuset {
                cfg.cpuset = Some(v);
            }
            if let Some(v) = node_id {
                cfg.node_id = v;
            }
            if let Some(v) = rpc_listen {
                cfg.rpc_listen = Some(v);
            }
            if let Some(v) = metrics_listen {
                cfg.metrics_listen = Some(v);
            }
            if let Some(v) = voters {
                cfg.voters = vec![v];
            }
            if let Some(v) = default_replication_factor {
                cfg.default_replication_factor = v;
            }
            corelog_broker::server::run(cfg)
        })(),
        Cmd::Topic {
            bootstrap_server,
            cmd,
        } => topic(&bootstrap_server, cmd),
        Cmd::Group {
            bootstrap_server,
            cmd,
        } => group(&bootstrap_server, cmd),
        Cmd::User {
            bootstrap_server,
            cmd,
        } => corelog_broker::security_cli::user(&bootstrap_server, cmd),
        Cmd::Acl {
            bootstrap_server,
            cmd,
        } => corelog_broker::security_cli::acl_cmd(&bootstrap_server, cmd),
        Cmd::Dev {
            brokers,
            port,
            data_dir,
            shards,
        } => dev(brokers, port, &data_dir, shards),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// println! that ends the process quietly when stdout is closed (`corelog topic list |
/// head`), as command-line tools do, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

fn topic(bootstrap: &str, cmd: TopicCmd) -> Result<(), String> {
    let mut c = Client::connect(bootstrap)?;
    match cmd {
        TopicCmd::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            Client::to_controller(bootstrap)?.create_topic(
                &name,
                partitions,
                replication_factor,
                &configs,
            )?;
            out!("Created topic {name}.");
        }
        TopicCmd::List => {
            let md = c.metadata(None)?;
            let mut names: Vec<String> = md
                .topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                .collect();
            names.sort();
            for n in names {
                out!("{n}");
            }
        }
        TopicCmd::Describe { name } => {
            // On a cluster, a topic created a moment ago may not have reached the broker
            // asked yet (the controller answered once it applied it), nor its leaders
            // been elected: ask again for a little while before calling it missing.
            let mut md = c.metadata(Some(&[&name]))?;
            for _ in 0..20 {
                let settled = md.topics.first().is_some_and(|t| {
                    t.error_code == 0 && t.partitions.iter().all(|p| p.error_code == 0)
                });
                if settled || md.brokers.len() < 2 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                md = c.metadata(Some(&[&name]))?;
            }
            let t = md
                .topics
                .first()
                .ok_or_else(|| "empty metadata response".to_string())?;
            if t.error_code != 0 {
                return Err(format!(
                    "{name}: {}",
                    corelog_broker::errors::name(t.error_code)
                ));
            }
            let partitions = t.partitions.len() as i32;
            let configs = c.topic_configs(&name)?;
            let overrides: Vec<String> = configs
                .iter()
                .filter(|(_, _, o)| *o)
                .map(|(k, v, _)| format!("{k}={v}"))
                .collect();
            out!(
                "Topic: {name}\tTopicId: {}\tPartitionCount: {partitions}\tReplicationFactor: {}\tConfigs: {}",
                t.topic_id,
                t.partitions.first().map_or(1, |p| p.replica_nodes.len()),
                overrides.join(",")
            );
            let offsets = c.offsets(&name, partitions)?;
            out!(
                "{:<10} {:<8} {:<10} {:<10} {:>14} {:>14}  OFFLINE",
                "PARTITION",
                "LEADER",
                "REPLICAS",
                "ISR",
                "START-OFFSET",
                "END-OFFSET"
            );
            let mut parts = t.partitions.clone();
            parts.sort_by_key(|p| p.partition_index);
            for p in parts {
                let join = |v: &[kafka_protocol::messages::BrokerId]| {
                    v.iter()
                        .map(|b| b.0.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let (start, end) = offsets
                    .get(p.partition_index as usize)
                    .copied()
                    .unwrap_or((-1, -1));
                out!(
                    "{:<10} {:<8} {:<10} {:<10} {:>14} {:>14}  {}",
                    p.partition_index,
                    p.leader_id.0,
                    join(&p.replica_nodes),
                    join(&p.isr_nodes),
                    start,
                    end,
                    join(&p.offline_replicas)
                );
            }
        }
        TopicCmd::Delete { name } => {
            Client::to_controller(bootstrap)?.delete_topic(&name)?;
            out!("Deleted topic {name}.");
        }
    }
    Ok(())
}

fn group(bootstrap: &str, cmd: GroupCmd) -> Result<(), String> {
    use corelog_broker::group::consumer_assignment;
    let mut c = Client::connect(bootstrap)?;
    match cmd {
        GroupCmd::List => {
            out!("{:<40} {}", "GROUP", "STATE");
            for (g, state) in c.list_groups()? {
                out!("{g:<40} {state}");
            }
        }
        GroupCmd::Describe { name } => {
            let mut c = Client::to_coordinator(bootstrap, &name)?;
            let d = c.describe_group(&name)?;
            if d.error_code != 0 {
                return Err(format!(
                    "{name}: {}",
                    corelog_broker::errors::name(d.error_code)
                ));
            }
            // A group the coordinator does not know, with no committed offsets either.
            if d.group_state.as_str() == "Dead" && c.committed(&name)?.is_empty() {
                return Err(format!("consumer group '{name}' does not exist"));
            }
            out!(
                "Group: {name}\tState: {}\tProtocol: {}\tMembers: {}",
                d.group_state.as_str(),
                d.protocol_data.as_str(),
                d.members.len()
            );
            // Who holds each partition, from the members' assignments.
            let mut owner = std::collections::BTreeMap::new();
            for m in &d.members {
                for (topic, parts) in consumer_assignment(&m.member_assignment) {
                    for p in parts {
                        owner.insert(
                            (topic.clone(), p),
                            (
                                m.member_id.to_string(),
                                m.client_host.to_string(),
                                m.client_id.to_string(),
                            ),
                        );
                    }
                }
            }
            let committed = c.committed(&name)?;
            let mut rows: std::collections::BTreeMap<(String, i32), i64> =
                committed.into_iter().map(|(t, p, o)| ((t, p), o)).collect();
            for key in owner.keys() {
                rows.entry(key.clone()).or_insert(-1);
            }
            let mut ends = std::collections::BTreeMap::new();
            let topics: std::collections::BTreeSet<String> =
                rows.keys().map(|(t, _)| t.clone()).collect();
            for t in topics {
                let md = c.metadata(Some(&[&t]))?;
                let n = md.topics.first().map_or(0, |x| x.partitions.len() as i32);
                for (p, (_, end)) in c.offsets(&t, n)?.into_iter().enumerate() {
                    ends.insert((t.clone(), p as i32), end);
                }
            }
            out!(
                "{:<24} {:>9} {:>14} {:>14} {:>8}  {:<40} {:<16} CLIENT-ID",
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "CONSUMER-ID",
                "HOST"
            );
            for ((t, p), committed) in rows {
                let end = ends.get(&(t.clone(), p)).copied().unwrap_or(-1);
                let lag = if committed >= 0 && end >= 0 {
                    (end - committed).max(0).to_string()
                } else {
                    "-".into()
                };
                let current = if committed >= 0 {
                    committed.to_string()
                } else {
                    "-".into()
                };
                let (member, host, client) = owner
                    .get(&(t.clone(), p))
                    .cloned()
                    .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
                out!(
                    "{t:<24} {p:>9} {current:>14} {end:>14} {lag:>8}  {member:<40} {host:<16} {client}"
                );
            }
        }
    }
    Ok(())
}

/// `corelog dev`: starts `brokers` brokers of one cluster as child processes of this
/// one, prints the bootstrap servers, and stops them all (SIGTERM, a graceful shutdown)
/// on Ctrl-C or when one of them exits.
fn dev(brokers: u32, port: u16, data_dir: &std::path::Path, shards: usize) -> Result<(), String> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !(1..=9).contains(&brokers) {
        return Err("--brokers must be between 1 and 9".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let kafka = |i: u32| format!("127.0.0.1:{}", u32::from(port) + i - 1);
    let rpc = |i: u32| format!("127.0.0.1:{}", u32::from(port) + 100 + i - 1);
    let voters: Vec<String> = (1..=brokers).map(|i| format!("{i}@{}", rpc(i))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    // Each broker its own CPUs, round the machine's: pinned to the same ones, they would
    // all crowd the first while the rest idle.
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpuset = |i: u32| {
        let first = (i as usize - 1) * shards;
        (first..first + shards)
            .map(|c| (c % ncpu).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    // One secret for the brokers' RPC, made once and kept with the data: a restarted dev
    // cluster finds the same one.
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let secret = data_dir.join("cluster-secret");
    if !secret.exists() {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "no random numbers for the cluster secret".to_string())?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // Readable by its owner only, like any secret.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .and_then(|mut f| f.write_all(hex.as_bytes()))
            .map_err(|e| format!("{}: {e}", secret.display()))?;
    }
    let mut children = Vec::new();
    for i in 1..=brokers {
        let dir = data_dir.join(format!("broker-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = std::fs::File::create(data_dir.join(format!("broker-{i}.log")))
            .map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["serve", "--node-id", &i.to_string(), "--listen", &kafka(i)])
            .args(["--rpc-listen", &rpc(i), "--voters", &voters.join(",")])
            .arg("--cluster-secret-file")
            .arg(&secret)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--shards", &shards.to_string(), "--cpuset", &cpuset(i)])
            .args(["--default-replication-factor", &brokers.min(3).to_string()])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // Its own process group: Ctrl-C reaches this process only, which stops the
        // brokers in order rather than all at once mid-write.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start broker {i}: {e}"))?;
        children.push((i, child));
    }
    let bootstrap: Vec<String> = (1..=brokers).map(kafka).collect();
    out!(
        "corelog dev: {brokers} brokers, data and logs in {}",
        data_dir.display()
    );
    out!("bootstrap servers: {}", bootstrap.join(","));
    out!("Ctrl-C stops them all.");
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) && failed.is_none() {
        for (i, c) in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                failed = Some(format!(
                    "broker {i} exited ({status}); see {}",
                    data_dir.join(format!("broker-{i}.log")).display()
                ));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for (_, c) in children.iter() {
        // SIGTERM: each broker drains and closes its partitions.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for (i, mut c) in children {
        match c.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("broker {i} stopped with {s}"),
            Err(e) => eprintln!("broker {i}: {e}"),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => {
            out!("stopped");
            Ok(())
        }
    }
}
