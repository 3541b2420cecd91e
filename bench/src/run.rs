//! `corelog-bench run WORKLOAD`: open-loop producers and consumers over the Kafka protocol,
//! publish and end-to-end latency with coordinated omission corrected.
//!
//! Every message has an intended send time from the rate schedule, written into its first
//! 8 bytes; publish latency is ack time minus intended time, end-to-end latency is consume
//! time minus intended time. A broker that stalls delays the intended times behind it, so
//! the stall shows in the percentiles instead of silently slowing the load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::driver::{Driver, From};
use crate::peers::System;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub partitions: i32,
    pub message_bytes: usize,
    pub producers: usize,
    pub consumer_groups: usize,
    /// Messages per second over all producers; 0 = as fast as acknowledged.
    pub rate: u64,
    pub batch_bytes: usize,
    pub linger_ms: u64,
    /// "all", "1" or "0".
    pub acks: String,
    pub duration_s: u64,
    pub warmup_s: u64,
    /// Produce this much first, then measure consumers reading it from the start.
    #[serde(default)]
    pub backlog_bytes: u64,
    /// The codec the Kafka driver's producers compress batches with: none (default),
    /// gzip, snappy, lz4 or zstd.
    #[serde(default)]
    pub producer_codec: String,
    /// Configs the topic is created with (Kafka drivers), e.g. compression.type.
    #[serde(default)]
    pub topic_configs: std::collections::BTreeMap<String, String>,
    /// Share of each message's padding that is random bytes (0 to 1; default 0, all 'x'),
    /// so codecs meet data they cannot shrink to nothing.
    #[serde(default)]
    pub random_fraction: f64,
}

const SHIPPED: &[(&str, &str)] = &[
    ("1k-max", include_str!("../workloads/1k-max.toml")),
    ("1m-max", include_str!("../workloads/1m-max.toml")),
    ("100b-max", include_str!("../workloads/100b-max.toml")),
    ("1k-50mbs", include_str!("../workloads/1k-50mbs.toml")),
    ("fanout-4", include_str!("../workloads/fanout-4.toml")),
    ("catchup-2g", include_str!("../workloads/catchup-2g.toml")),
    ("smoke", include_str!("../workloads/smoke.toml")),
];

impl Workload {
    /// A shipped workload by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Self, String> {
        let text = match SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, t)) => (*t).to_string(),
            None => std::fs::read_to_string(name_or_path).map_err(|e| {
                let names: Vec<&str> = SHIPPED.iter().map(|(n, _)| *n).collect();
                format!(
                    "{name_or_path}: {e} (shipped workloads: {})",
                    names.join(", ")
                )
            })?,
        };
        let w: Workload = toml::from_str(&text).map_err(|e| format!("{name_or_path}: {e}"))?;
        if w.message_bytes < 8
            || w.partitions < 1
            || w.producers < 1
            || w.batch_bytes < w.message_bytes
        {
            return Err(format!(
                "{name_or_path}: message_bytes >= 8, partitions >= 1, producers >= 1, batch_bytes >= message_bytes"
            ));
        }
        Ok(w)
    }

    pub fn acks(&self) -> Result<i16, String> {
        match self.acks.as_str() {
            "all" | "-1" => Ok(-1),
            "1" => Ok(1),
            "0" => Ok(0),
            other => Err(format!("acks must be all, 1 or 0, not {other}")),
        }
    }
}

/// What `run` and `compare` share: the workload, where data goes, and what is written.
#[derive(ClapArgs, Clone)]
pub struct Common {
    /// A shipped workload (1k-max, 1m-max, 100b-max, 1k-50mbs, fanout-4, catchup-2g, smoke) or a
    /// TOML file.
    pub workload: String,
    /// Where started servers put their data dirs (a real disk, not tmpfs).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Override the workload's duration (seconds).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Write the full result, histograms included, to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Fail unless every acknowledged message was read by every consumer group and
    /// nothing was refused (a driver check, for smoke runs).
    #[arg(long)]
    pub strict: bool,
    /// Producers compress their batches with this codec (none, gzip, snappy, lz4, zstd;
    /// Kafka-protocol systems only).
    #[arg(long)]
    pub producer_codec: Option<String>,
    /// A config the topic is created with, as KEY=VALUE (repeatable; Kafka-protocol
    /// systems), e.g. compression.type=zstd to measure the broker recompressing.
    #[arg(long = "topic-config", value_name = "KEY=VALUE")]
    pub topic_configs: Vec<String>,
    /// Share of each message's padding that is random (0 to 1).
    #[arg(long)]
    pub random_fraction: Option<f64>,
}

impl Common {
    /// The workload, with `--duration` applied.
    pub fn load(&self) -> Result<Workload, String> {
        let mut w = Workload::load(&self.workload)?;
        if let Some(d) = self.duration {
            w.duration_s = d;
        }
        if let Some(c) = &self.producer_codec {
            w.producer_codec = c.clone();
        }
        for kv in &self.topic_configs {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--topic-config {kv}: expected KEY=VALUE"))?;
            w.topic_configs.insert(k.to_string(), v.to_string());
        }
        if let Some(f) = self.random_fraction {
            w.random_fraction = f;
        }
        crate::driver::codec_id(&w.producer_codec)?;
        Ok(w)
    }

    /// Writes `result` to `--json`, if given.
    pub fn write_json(&self, result: &impl Serialize) -> Result<(), String> {
        let Some(path) = &self.json else {
            return Ok(());
        };
        let json = serde_json::to_string_pretty(result).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[derive(ClapArgs, Clone)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// A running server of `--system` (default 127.0.0.1:9092, a Kafka-compatible broker).
    #[arg(long, conflicts_with = "spawn")]
    pub broker: Option<String>,
    /// Start a fresh server of `--system` on a temporary data dir and stop it afterwards.
    #[arg(long)]
    pub spawn: bool,
    /// corelog, tansu, kafka (any Kafka-compatible broker, with --broker), nats (JetStream)
    /// or redis (Streams). Default: corelog with --spawn, kafka with --broker.
    #[arg(long)]
    pub system: Option<String>,
    /// With --spawn: a corelog cluster of this many brokers on this machine (topics with
    /// min(3, brokers) replicas). With --broker (bootstrap servers, comma-separated): the
    /// replication factor of the bench's topic is min(3, this).
    #[arg(long, default_value_t = 1)]
    pub brokers: usize,
    /// Kafka connections over TLS: with --spawn, corelog serves a certificate made for
    /// the run (openssl) on an SSL listener; with --broker, give --tls-ca.
    #[arg(long)]
    pub tls: bool,
    /// PEM CA certificate(s) the broker's certificate chains to (--broker with --tls).
    #[arg(long, requires = "tls")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// USER:PASSWORD: every connection logs in with SASL PLAIN (with --spawn the broker
    /// gets a SASL_PLAINTEXT listener, SASL_SSL with --tls, and this user).
    #[arg(long)]
    pub sasl: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub system: String,
    /// What an acknowledgement promised in this run.
    #[serde(default)]
    pub durability: String,
    /// Which round of a `compare` this was (0 for `run`).
    #[serde(default)]
    pub round: u32,
    pub workload: Workload,
    pub machine: String,
    pub broker: String,
    pub measured_s: f64,
    pub messages_acked: u64,
    pub messages_consumed: u64,
    pub errors: u64,
    /// What the system said when it first refused a batch.
    #[serde(default)]
    pub first_refusal: Option<String>,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub publish: Percentiles,
    pub e2e: Percentiles,
    /// (percentile, milliseconds) for plots.
    pub publish_spectrum: Vec<(f64, f64)>,
    pub e2e_spectrum: Vec<(f64, f64)>,
    /// (second, acknowledged messages per second).
    pub throughput_series: Vec<(f64, f64)>,
    pub catchup_mb_per_s: Option<f64>,
    pub client_cpu_pct: f64,
    /// The busiest client thread's CPU share of its lifetime, in percent of one core.
    #[serde(default)]
    pub client_busiest_thread_pct: f64,
    pub client_saturated: bool,
    /// CPU seconds (user + system) of a server the bench started, over the whole run
    /// (warm-up, produce and consume).
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
    /// That CPU time per acknowledged produced byte, in nanoseconds: the server's cost of
    /// taking a byte in and serving it to every consumer group.
    #[serde(default)]
    pub server_ns_per_byte: Option<f64>,
    /// That CPU time in core-seconds per GB moved: produced plus consumed (every group's
    /// reads counted), the measure issue 13 sets its target in.
    #[serde(default)]
    pub server_core_s_per_gb: Option<f64>,
    /// The server's CPU seconds by thread over the run: each shard's (`b0/corelog-shard-1`,
    /// the broker index first), and the rest of the process (io_uring workers, and any
    /// thread that came and went) as `bN/other`. Shows whether one shard saturates.
    #[serde(default)]
    pub server_threads_cpu_s: Vec<(String, f64)>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Percentiles {
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        p9999_ms: ms(0.9999),
        max_ms: h.max() as f64 / 1000.0,
        count: h.len(),
    }
}

fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    [
        0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
    ]
    .iter()
    .map(|&q| (q * 100.0, h.value_at_quantile(q) as f64 / 1000.0))
    .collect()
}

/// User+system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/self/stat")
}

/// Measures one client thread: a thread that is busy all the time is a bottleneck even
/// when the machine as a whole is not (one of two cores, say).
struct ThreadMeter {
    cpu0: f64,
    t0: Instant,
}

impl ThreadMeter {
    fn start() -> Self {
        Self {
            cpu0: cpu_seconds_of("/proc/thread-self/stat"),
            t0: Instant::now(),
        }
    }

    /// Records this thread's busy share in `shared` (runs under a second say too little).
    fn finish(self, shared: &Shared) {
        let wall = self.t0.elapsed().as_secs_f64();
        if wall >= 1.0 {
            let busy = (cpu_seconds_of("/proc/thread-self/stat") - self.cpu0) / wall;
            shared
                .busiest_thread_permille
                .fetch_max((busy * 1000.0) as u64, Ordering::Relaxed);
        }
    }
}

/// CPU seconds of each shard of the given server processes, by `bN/thread-name` (a shard's
/// executor thread and glommio's helper thread share its name, and its sum).
fn shard_cpu(pids: &[u32]) -> Vec<(String, f64)> {
    let mut out: std::collections::BTreeMap<String, f64> = Default::default();
    for (i, pid) in pids.iter().enumerate() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let name = name.trim();
            if name.starts_with("corelog-shard") {
                let stat = path.join("stat");
                *out.entry(format!("b{i}/{name}")).or_default() +=
                    cpu_seconds_of(&stat.to_string_lossy());
            }
        }
    }
    out.into_iter().collect()
}

/// Per-shard CPU over the run (end minus start), and each process's rest as `bN/other`.
fn shard_cpu_over_run(
    start: &[(String, f64)],
    end: &[(String, f64)],
    totals: &[f64],
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = end
        .iter()
        .map(|(n, c)| {
            let c0 = start.iter().find(|(m, _)| m == n).map_or(0.0, |(_, c)| *c);
            (n.clone(), c - c0)
        })
        .collect();
    for (i, total) in totals.iter().enumerate() {
        let prefix = format!("b{i}/");
        let shards: f64 = out
            .iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .map(|(_, c)| c)
            .sum();
        out.push((format!("b{i}/other"), (total - shards).max(0.0)));
    }
    out
}

fn cpu_seconds_of(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/pid/stat (utime, stime), 100 ticks per second.
    (ticks(11) + ticks(12)) / 100.0
}

pub fn run(args: Args) -> Result<(), String> {
    let w = args.common.load()?;
    let system = match (&args.system, args.spawn) {
        (Some(s), _) => System::parse(s)?,
        (None, true) => System::Corelog,
        (None, false) => System::Kafka,
    };
    if let Some(spec) = &args.sasl {
        if !system.speaks_kafka() {
            return Err(format!(
                "--sasl: {} is not a Kafka-protocol system",
                system.name()
            ));
        }
        crate::sasl::enable(spec)?;
    }
    // Kept until the run ends: the spawned broker reads its certificate from here.
    let _tls_dir = if args.tls {
        if !system.speaks_kafka() {
            return Err(format!(
                "--tls: {} is not a Kafka-protocol system",
                system.name()
            ));
        }
        match (&args.tls_ca, args.spawn) {
            (Some(ca), _) => {
                crate::tls::enable(ca)?;
                None
            }
            (None, true) => {
                let d = tempfile::tempdir().map_err(|e| e.to_string())?;
                crate::tls::enable_for_spawn(d.path())?;
                Some(d)
            }
            (None, false) => return Err("--tls with --broker needs --tls-ca FILE".into()),
        }
    } else {
        None
    };
    let server = match (args.spawn, args.brokers) {
        (true, 1) => Some(system.start(&args.common.dir)?),
        (true, n) => Some(system.start_cluster(&args.common.dir, n)?),
        (false, _) => None,
    };
    let addr = match (&server, &args.broker) {
        (Some(s), _) => s.addr.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) => "127.0.0.1:9092".to_string(),
    };
    let pids = server.as_ref().map(|s| s.pids()).unwrap_or_default();
    let replicas = args.brokers.clamp(1, 3) as i16;
    let result = run_workload(&w, system, &addr, &args.common.dir, &pids, replicas)?;
    drop(server);
    print_result(&result);
    args.common.write_json(&result)?;
    if result.messages_acked == 0 && w.acks()? != 0 {
        return Err(match &result.first_refusal {
            Some(why) => format!("no message was acknowledged; the first refusal: {why}"),
            None => "no message was acknowledged".into(),
        });
    }
    if args.common.strict {
        check_complete(&result)?;
    }
    Ok(())
}

/// Kafka's default `max.message.bytes` (a topic's largest record batch).
const KAFKA_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// A workload whose batches a Kafka-protocol broker would refuse, every one, is refused up
/// front, saying why: its batches may reach `batch_bytes` plus one message and the batch
/// framing, against the topic's `max.message.bytes` (the workload's topic config, else
/// Kafka's default).
fn check_batch_fits(w: &Workload, system: System) -> Result<(), String> {
    if !matches!(system, System::Corelog | System::Tansu | System::Kafka) {
        return Ok(());
    }
    let limit = match w.topic_configs.get("max.message.bytes") {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| format!("max.message.bytes={v}: not a number"))?,
        None => KAFKA_MAX_MESSAGE_BYTES,
    };
    // The batch header, and per record its framing (length, attributes, deltas, key and
    // value lengths, header count): at most this much beyond the values.
    let per_batch = (w.batch_bytes / w.message_bytes).max(1);
    let largest = crate::driver::BATCH_OVERHEAD + per_batch * (w.message_bytes + 24);
    if largest > limit {
        return Err(format!(
            "{}: batches of {per_batch} x {} B messages ({largest} B framed) exceed the topic's max.message.bytes ({limit}): every produce would be refused (MESSAGE_TOO_LARGE); lower batch_bytes or set topic_configs max.message.bytes",
            w.name, w.message_bytes
        ));
    }
    Ok(())
}

/// Every acknowledged message read by every group, none refused.
pub fn check_complete(r: &RunResult) -> Result<(), String> {
    // No group (consumer_groups = 0): nothing is read, and nothing must be.
    let groups = r.workload.consumer_groups as u64;
    if r.messages_acked == 0 || r.errors > 0 || r.messages_consumed < r.messages_acked * groups {
        return Err(format!(
            "{}: {} acknowledged, {} refused, {} read by {groups} group(s): messages missing",
            r.system, r.messages_acked, r.errors, r.messages_consumed
        ));
    }
    Ok(())
}

pub fn print_result(r: &RunResult) {
    println!("{} on {} — {}", r.workload.name, r.system, r.machine);
    if !r.durability.is_empty() {
        println!("  durability: {}", r.durability);
    }
    println!(
        "  throughput: {:.0} msg/s, {:.1} MB/s over {:.1} s ({} acknowledged, {} consumed, {} errors)",
        r.msgs_per_s, r.mb_per_s, r.measured_s, r.messages_acked, r.messages_consumed, r.errors
    );
    for (name, p) in [("publish", &r.publish), ("end-to-end", &r.e2e)] {
        if p.count > 0 {
            println!(
                "  {name:<10} ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}",
                p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.p9999_ms, p.max_ms
            );
        }
    }
    if let Some(why) = &r.first_refusal {
        println!("  first refusal: {why}");
    }
    if let Some(c) = r.catchup_mb_per_s {
        println!("  catch-up read: {c:.1} MB/s");
    }
    if let (Some(cpu), Some(ns)) = (r.server_cpu_s, r.server_ns_per_byte) {
        println!("  server CPU: {cpu:.2} s, {ns:.2} ns per produced byte");
        if let Some(g) = r.server_core_s_per_gb {
            println!("  server CPU per GB produced + consumed: {g:.2} core-s");
        }
        if !r.server_threads_cpu_s.is_empty() {
            let by: Vec<String> = r
                .server_threads_cpu_s
                .iter()
                .map(|(n, c)| format!("{n} {c:.2} s"))
                .collect();
            println!("  server CPU by thread: {}", by.join(", "));
        }
    }
    println!(
        "  client CPU: {:.0}% of the machine, busiest client thread {:.0}% of a core{}",
        r.client_cpu_pct,
        r.client_busiest_thread_pct,
        if r.client_saturated {
            " — SATURATED: the client may be the bottleneck"
        } else {
            ""
        }
    );
}

struct Shared {
    start: Instant,
    stop: AtomicBool,
    acked: AtomicU64,
    consumed: AtomicU64,
    errors: AtomicU64,
    /// What the system said when it first refused a batch.
    first_refusal: Mutex<Option<String>>,
    busiest_thread_permille: AtomicU64,
    publish: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

pub fn run_workload(
    w: &Workload,
    system: System,
    addr: &str,
    dir: &Path,
    server_pids: &[u32],
    replication_factor: i16,
) -> Result<RunResult, String> {
    let acks = w.acks()?;
    check_batch_fits(w, system)?;
    let driver: Arc<dyn Driver> = Arc::from(system.driver(addr, acks, w, replication_factor)?);
    let topic = format!("bench-{}-{:08x}", w.name, fastrand::u32(..));
    driver.create_topic(&topic, w.partitions)?;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_refusal: Mutex::new(None),
        busiest_thread_permille: AtomicU64::new(0),
        publish: Mutex::new(histogram()),
        e2e: Mutex::new(histogram()),
    });
    let cpu0 = cpu_seconds();
    // Every broker's CPU: a cluster's cost is all of its processes'.
    let server_stats: Vec<String> = server_pids
        .iter()
        .map(|p| format!("/proc/{p}/stat"))
        .collect();
    let server_cpu = || -> Option<f64> {
        (!server_stats.is_empty()).then(|| server_stats.iter().map(|s| cpu_seconds_of(s)).sum())
    };
    let server_cpu0 = server_cpu();
    let per_server = || -> Vec<f64> { server_stats.iter().map(|s| cpu_seconds_of(s)).collect() };
    let per_server0 = per_server();
    let shards0 = shard_cpu(server_pids);
    let mut catchup = None;
    let mut backlog_s = None;
    let warmup_ns = w.warmup_s * 1_000_000_000;

    if w.backlog_bytes > 0 {
        // Produce the backlog as fast as possible, then time reading it back.
        let messages = w.backlog_bytes / w.message_bytes as u64;
        let t = Instant::now();
        produce_phase(
            w,
            &driver,
            &topic,
            acks,
            &shared,
            Some(messages),
            u64::MAX,
            0,
        )?;
        backlog_s = Some(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let consumed_before = shared.consumed.load(Ordering::Relaxed);
        // Reading old data: end-to-end latency would only measure the backlog's age.
        let handles = start_consumers(
            w,
            &driver,
            &topic,
            From::Beginning,
            &shared,
            u64::MAX,
            Some(messages),
        )?;
        // A message that never arrives must not hang the run: stop the readers once
        // nothing has been read for a while (`--strict` then reports what is missing).
        let mut last = (shared.consumed.load(Ordering::Relaxed), Instant::now());
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            let now = shared.consumed.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(30) {
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
        for h in handles {
            h.join().map_err(|_| "consumer panicked".to_string())??;
        }
        shared.stop.store(false, Ordering::Relaxed);
        let bytes =
            (shared.consumed.load(Ordering::Relaxed) - consumed_before) * w.message_bytes as u64;
        // Per group; with no group nothing was read back.
        catchup = (w.consumer_groups > 0)
            .then(|| bytes as f64 / 1e6 / t.elapsed().as_secs_f64() / w.consumer_groups as f64);
    }

    let measure_start_ns = shared.now_ns();
    let consumers = if w.backlog_bytes > 0 {
        Vec::new()
    } else {
        start_consumers(
            w,
            &driver,
            &topic,
            From::End,
            &shared,
            measure_start_ns + warmup_ns,
            None,
        )?
    };
    // Progress line and throughput series, once a second.
    let series = Arc::new(Mutex::new(Vec::new()));
    let progress = {
        let shared = shared.clone();
        let series = series.clone();
        let msg_bytes = w.message_bytes as f64;
        std::thread::spawn(move || {
            let mut last = shared.acked.load(Ordering::Relaxed);
            let mut t = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                t += 1;
                let now = shared.acked.load(Ordering::Relaxed);
                let rate = (now - last) as f64;
                last = now;
                series.lock().expect("not poisoned").push((t as f64, rate));
                let p99 = shared
                    .publish
                    .lock()
                    .expect("not poisoned")
                    .value_at_quantile(0.99) as f64
                    / 1000.0;
                eprintln!(
                    "[{t:>4}s] {rate:>9.0} msg/s {:>8.1} MB/s  publish p99 {p99:.3} ms  consumed {}",
                    rate * msg_bytes / 1e6,
                    shared.consumed.load(Ordering::Relaxed)
                );
            }
        })
    };
    let end_ns = measure_start_ns + (w.warmup_s + w.duration_s) * 1_000_000_000;
    let acked_before = shared.acked.load(Ordering::Relaxed);
    if w.duration_s > 0 {
        produce_phase(
            w,
            &driver,
            &topic,
            acks,
            &shared,
            None,
            end_ns,
            measure_start_ns + warmup_ns,
        )?;
    }
    // A backlog workload's throughput is that of producing the backlog.
    let measured_s = backlog_s
        .unwrap_or((shared.now_ns().saturating_sub(measure_start_ns + warmup_ns)) as f64 / 1e9);
    // Let consumers drain what was acknowledged (bounded).
    let total = shared.acked.load(Ordering::Relaxed) - acked_before;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !consumers.is_empty()
        && shared.consumed.load(Ordering::Relaxed) < total * w.consumer_groups as u64
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    shared.stop.store(true, Ordering::Relaxed);
    for h in consumers {
        h.join().map_err(|_| "consumer panicked".to_string())??;
    }
    let _ = progress.join();
    let cpu = cpu_seconds() - cpu0;
    let server_cpu_s = server_cpu().zip(server_cpu0).map(|(c, c0)| c - c0);
    let totals: Vec<f64> = per_server()
        .iter()
        .zip(&per_server0)
        .map(|(c, c0)| c - c0)
        .collect();
    let server_threads_cpu_s = shard_cpu_over_run(&shards0, &shard_cpu(server_pids), &totals);
    let acked_bytes = shared.acked.load(Ordering::Relaxed) as f64 * w.message_bytes as f64;
    let consumed_bytes = shared.consumed.load(Ordering::Relaxed) as f64 * w.message_bytes as f64;
    let wall = shared.start.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let client_cpu_pct = 100.0 * cpu / (wall * cores);
    let busiest_thread_pct = shared.busiest_thread_permille.load(Ordering::Relaxed) as f64 / 10.0;
    let publish = shared.publish.lock().expect("not poisoned").clone();
    let e2e = shared.e2e.lock().expect("not poisoned").clone();
    let measured_msgs = publish.len();
    let msgs_per_s = if measured_s > 0.0 {
        measured_msgs as f64 / measured_s
    } else {
        0.0
    };
    let series = series.lock().expect("not poisoned").clone();
    Ok(RunResult {
        system: system.name().to_string(),
        durability: match server_pids.len() {
            n if n > 1 => format!(
                "{}; a cluster of {n} brokers, every partition on {replication_factor} (acks=all: a majority durable)",
                system.durability(&w.acks)
            ),
            _ => system.durability(&w.acks),
        },
        round: 0,
        workload: w.clone(),
        machine: crate::storage::machine_description(dir),
        broker: addr.to_string(),
        measured_s,
        messages_acked: shared.acked.load(Ordering::Relaxed),
        messages_consumed: shared.consumed.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        first_refusal: shared.first_refusal.lock().expect("not poisoned").clone(),
        msgs_per_s,
        mb_per_s: msgs_per_s * w.message_bytes as f64 / 1e6,
        publish: percentiles(&publish),
        e2e: percentiles(&e2e),
        publish_spectrum: spectrum(&publish),
        e2e_spectrum: spectrum(&e2e),
        throughput_series: series,
        catchup_mb_per_s: catchup,
        // One busy client thread per producer is expected; flag it when the client takes
        // most of the machine, where it may be what limits the numbers.
        client_saturated: client_cpu_pct > 80.0 || busiest_thread_pct > 90.0,
        client_cpu_pct,
        client_busiest_thread_pct: busiest_thread_pct,
        server_cpu_s,
        server_ns_per_byte: server_cpu_s
            .filter(|_| acked_bytes > 0.0)
            .map(|s| s * 1e9 / acked_bytes),
        server_core_s_per_gb: server_cpu_s
            .filter(|_| acked_bytes + consumed_bytes > 0.0)
            .map(|s| s * 1e9 / (acked_bytes + consumed_bytes)),
        server_threads_cpu_s,
    })
}

/// Runs the producers until `end_ns` (or `count` messages in total), recording publish
/// latency of messages intended at or after `record_from_ns`.
#[allow(clippy::too_many_arguments)]
fn produce_phase(
    w: &Workload,
    driver: &Arc<dyn Driver>,
    topic: &str,
    acks: i16,
    shared: &Arc<Shared>,
    count: Option<u64>,
    end_ns: u64,
    record_from_ns: u64,
) -> Result<(), String> {
    let per_producer = count.map(|c| c.div_ceil(w.producers as u64));
    let mut handles = Vec::new();
    for id in 0..w.producers {
        let (w, driver, topic, shared) =
            (w.clone(), driver.clone(), topic.to_string(), shared.clone());
        handles.push(std::thread::spawn(move || {
            let meter = ThreadMeter::start();
            let r = producer(
                &w,
                id,
                driver.as_ref(),
                &topic,
                acks,
                &shared,
                per_producer,
                end_ns,
                record_from_ns,
            );
            meter.finish(&shared);
            r
        }));
    }
    for h in handles {
        h.join().map_err(|_| "producer panicked".to_string())??;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn producer(
    w: &Workload,
    id: usize,
    driver: &dyn Driver,
    topic: &str,
    acks: i16,
    shared: &Arc<Shared>,
    count: Option<u64>,
    end_ns: u64,
    record_from_ns: u64,
) -> Result<(), String> {
    const MAX_IN_FLIGHT: usize = 5;
    let (mut publisher, mut acks_reader) = driver.producer(topic)?;
    let (tx, rx) = sync_channel::<(u64, Vec<u64>)>(MAX_IN_FLIGHT);
    // One slot per unacknowledged batch: the producer takes one before it publishes, the
    // ack reader frees one per acknowledged batch. (The data channel alone would not bound
    // them: the ack reader drains it to match acks that come out of order.)
    let (slot_tx, slot_rx) = sync_channel::<()>(MAX_IN_FLIGHT);
    let acker = {
        let shared = shared.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let meter = ThreadMeter::start();
            let r = (|| -> Result<(), String> {
                // Batches sent and not yet acknowledged, by tag: a peer may acknowledge them
                // out of order (NATS, across streams).
                let mut waiting = std::collections::HashMap::new();
                loop {
                    if waiting.is_empty() {
                        match rx.recv() {
                            Ok((tag, intended)) => waiting.insert(tag, intended),
                            Err(_) => return Ok(()),
                        };
                    }
                    let (tag, refusal) = acks_reader.next()?;
                    let now = shared.now_ns();
                    let _ = slot_rx.recv();
                    let intended = loop {
                        if let Some(v) = waiting.remove(&tag) {
                            break v;
                        }
                        let (t, v) = rx
                            .recv()
                            .map_err(|_| format!("acknowledgement of batch {tag}, never sent"))?;
                        waiting.insert(t, v);
                    };
                    if let Some(why) = refusal {
                        shared
                            .errors
                            .fetch_add(intended.len() as u64, Ordering::Relaxed);
                        shared
                            .first_refusal
                            .lock()
                            .expect("not poisoned")
                            .get_or_insert(why);
                        continue;
                    }
                    shared
                        .acked
                        .fetch_add(intended.len() as u64, Ordering::Relaxed);
                    let mut h = shared.publish.lock().expect("not poisoned");
                    for t in intended.iter().filter(|&&t| t >= record_from_ns) {
                        h.saturating_record((now.saturating_sub(*t) / 1000).max(1));
                    }
                }
            })();
            meter.finish(&shared);
            r
        })
    };
    let per_batch = (w.batch_bytes / w.message_bytes).max(1);
    let interval_ns = (1_000_000_000 * w.producers as u64)
        .checked_div(w.rate)
        .unwrap_or(0);
    let linger_ns = w.linger_ms * 1_000_000;
    // 64 paddings cycled: as many distinct messages as a 64 KiB batch of 1 KiB holds, so a
    // codec finds no repetition across messages that real data would not have.
    let random = ((w.message_bytes - 8) as f64 * w.random_fraction.clamp(0.0, 1.0)) as usize;
    let mut rng = fastrand::Rng::with_seed(id as u64);
    let paddings: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let mut p = vec![b'x'; w.message_bytes - 8];
            rng.fill(&mut p[..random]);
            p
        })
        .collect();
    let mut next_intended = shared.now_ns();
    let mut sent = 0u64;
    let mut sent_batches = 0u64;
    let mut partition = id as i32 % w.partitions;
    let mut pending: Vec<u64> = Vec::with_capacity(per_batch);
    loop {
        let now = shared.now_ns();
        let done = count.is_some_and(|c| sent >= c) || (count.is_none() && now >= end_ns);
        if done && pending.is_empty() {
            break;
        }
        if !done {
            if interval_ns == 0 {
                while pending.len() < per_batch
                    && count.is_none_or(|c| sent + (pending.len() as u64) < c)
                {
                    pending.push(now);
                }
            } else {
                while next_intended <= now && pending.len() < per_batch && next_intended < end_ns {
                    pending.push(next_intended);
                    next_intended += interval_ns;
                }
            }
        }
        let full = pending.len() >= per_batch;
        let lingered = pending.first().is_some_and(|&t| now >= t + linger_ns);
        if pending.is_empty() || !(full || lingered || done) {
            // Sleep until the batch must go: its first message has lingered long enough,
            // or enough messages will be due to fill it. Never spin: the client's CPU is
            // the broker's too on a small machine.
            let first = pending.first().copied().unwrap_or(next_intended);
            let missing = per_batch.saturating_sub(pending.len()).saturating_sub(1) as u64;
            let fill_at = next_intended.saturating_add(missing.saturating_mul(interval_ns));
            let wake = (first + linger_ns).min(fill_at).min(end_ns);
            let wait = wake.saturating_sub(now);
            if wait > 20_000 {
                std::thread::sleep(Duration::from_nanos(wait));
            } else {
                std::thread::yield_now();
            }
            if done && pending.is_empty() {
                break;
            }
            continue;
        }
        let tag = sent_batches;
        sent_batches += 1;
        let values: Vec<Vec<u8>> = pending
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut v = Vec::with_capacity(w.message_bytes);
                v.extend_from_slice(&t.to_le_bytes());
                v.extend_from_slice(&paddings[(sent as usize + i) % paddings.len()]);
                v
            })
            .collect();
        sent += pending.len() as u64;
        let intended = std::mem::take(&mut pending);
        if acks != 0 {
            // Before the publish, so the ack reader knows the batch when its ack comes.
            if slot_tx.send(()).is_err() || tx.send((tag, intended)).is_err() {
                // The ack reader stopped: its error says why.
                drop(tx);
                return acker
                    .join()
                    .map_err(|_| "ack reader panicked".to_string())?
                    .and(Err("ack reader stopped".into()));
            }
        } else {
            shared
                .acked
                .fetch_add(intended.len() as u64, Ordering::Relaxed);
        }
        // On failure the ack reader is left to end on its own (the socket's read timeout).
        publisher.publish(tag, partition, &values)?;
        partition = (partition + 1) % w.partitions;
    }
    drop(tx);
    drop(slot_tx);
    acker
        .join()
        .map_err(|_| "ack reader panicked".to_string())?
}

fn start_consumers(
    w: &Workload,
    driver: &Arc<dyn Driver>,
    topic: &str,
    from: From,
    shared: &Arc<Shared>,
    record_from_ns: u64,
    count: Option<u64>,
) -> Result<Vec<std::thread::JoinHandle<Result<(), String>>>, String> {
    let mut handles = Vec::new();
    for _ in 0..w.consumer_groups {
        // Created here, before any message is published, so `From::End` misses nothing.
        let mut consumer = driver.consumer(topic, w.partitions, from)?;
        let shared = shared.clone();
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            let meter = ThreadMeter::start();
            let mut got = 0u64;
            let mut lat = Vec::new();
            while !shared.stop.load(Ordering::Relaxed) && count.is_none_or(|n| got < n) {
                let n = consumer.poll(&mut |v: &[u8]| {
                    if let Some(t) = v.get(..8) {
                        let t = u64::from_le_bytes(t.try_into().expect("8 bytes"));
                        if t >= record_from_ns {
                            lat.push((shared.now_ns().saturating_sub(t) / 1000).max(1));
                        }
                    }
                })?;
                got += n;
                shared.consumed.fetch_add(n, Ordering::Relaxed);
                if !lat.is_empty() {
                    let mut hist = shared.e2e.lock().expect("not poisoned");
                    for l in lat.drain(..) {
                        hist.saturating_record(l);
                    }
                }
            }
            meter.finish(&shared);
            Ok(())
        }));
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shard_threads_are_found_by_name_and_the_rest_is_other() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::Builder::new()
            .name("corelog-shard-9".into())
            .spawn(move || {
                let mut x = 0u64;
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
            .unwrap();
        let pid = std::process::id();
        let before = shard_cpu(&[pid]);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after = shard_cpu(&[pid]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap();
        let named: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
        assert!(named.contains(&"b0/corelog-shard-9"), "{named:?}");
        let over = shard_cpu_over_run(&before, &after, &[100.0]);
        let shard = over
            .iter()
            .find(|(n, _)| n == "b0/corelog-shard-9")
            .unwrap()
            .1;
        assert!(shard > 0.05, "a busy thread used {shard} s");
        let other = over.iter().find(|(n, _)| n == "b0/other").unwrap().1;
        assert!(
            (other
                + over
                    .iter()
                    .filter(|(n, _)| n.contains("shard"))
                    .map(|(_, c)| c)
                    .sum::<f64>()
                - 100.0)
                .abs()
                < 1e-9
        );
    }

    use super::*;

    #[test]
    fn every_shipped_workload_loads() {
        for (name, _) in SHIPPED {
            let w = Workload::load(name).unwrap();
            assert_eq!(&w.name, name);
            w.acks().unwrap();
        }
        assert!(Workload::load("no-such-workload").is_err());
    }

    #[test]
    fn batches_past_max_message_bytes_are_refused_up_front() {
        for (name, _) in SHIPPED {
            let w = Workload::load(name).unwrap();
            check_batch_fits(&w, System::Corelog).unwrap();
        }
        let mut w = Workload::load("1k-max").unwrap();
        w.batch_bytes = 1 << 20;
        let e = check_batch_fits(&w, System::Corelog).unwrap_err();
        assert!(e.contains("MESSAGE_TOO_LARGE"), "{e}");
        // Fine where the topic takes it, and for systems without the limit.
        w.topic_configs
            .insert("max.message.bytes".into(), (2 << 20).to_string());
        check_batch_fits(&w, System::Corelog).unwrap();
        w.topic_configs.clear();
        check_batch_fits(&w, System::Nats).unwrap();
    }

    #[test]
    fn the_fixed_rate_workload_is_50_mb_per_second() {
        let w = Workload::load("1k-50mbs").unwrap();
        let mb_s = w.rate as f64 * w.message_bytes as f64 / 1e6;
        assert!((mb_s - 50.0).abs() < 0.5, "{mb_s}");
    }
}
