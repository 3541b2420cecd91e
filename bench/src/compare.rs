//! `corelog-bench compare WORKLOAD --peer PEER[,PEER...]`: corelog and its peers on the
//! same workload in one run, alternately (round 1: corelog first; round 2: the peers first;
//! ...), each on a fresh server and data dir, with the durability of each stated, then the
//! medians per system and the ratios corelog / peer.

use clap::Args as ClapArgs;
use serde::Serialize;

use crate::peers::System;
use crate::run::{self, RunResult, Workload};

#[derive(ClapArgs)]
pub struct Args {
    /// `--json` writes every run, the medians and the ratios; `--strict` checks every
    /// system delivered every acknowledged message.
    #[command(flatten)]
    pub common: run::Common,
    /// tansu, nats, redis (started here, fresh, for every run), or raw-disk (plain
    /// O_DIRECT writes of the bytes corelog acknowledged, fdatasync per batch: the physical
    /// limit). Several: `--peer tansu,nats,redis,raw-disk`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub peer: Vec<String>,
    /// Rounds of corelog + every peer; the summary takes each system's median.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// With raw-disk, also write the same bytes at this queue depth through io_uring, one
    /// fdatasync per round of that many batches (the device's ceiling; row
    /// raw-disk-qdN). 0: only the queue-depth-one peer.
    #[arg(long, default_value_t = 8)]
    pub raw_depth: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    System(System),
    RawDisk,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::System(s) => s.name(),
            Peer::RawDisk => "raw-disk",
        }
    }
}

#[derive(Serialize, Clone)]
struct Row {
    system: String,
    round: u32,
    msgs_per_s: f64,
    mb_per_s: f64,
    publish_p50_ms: f64,
    publish_p99_ms: f64,
    publish_p999_ms: f64,
    e2e_p99_ms: Option<f64>,
    errors: u64,
    durability: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<RunResult>,
}

#[derive(Serialize)]
struct Ratio {
    peer: String,
    /// corelog msgs/s over the peer's (> 1: corelog is ahead).
    throughput_ratio: f64,
    /// corelog publish p99 over the peer's (< 1: corelog is faster).
    publish_p99_ratio: f64,
    publish_p999_ratio: f64,
}

#[derive(Serialize)]
struct Report {
    workload: String,
    machine: String,
    rounds: u32,
    /// Every run, in the order they ran.
    runs: Vec<Row>,
    /// Each system's median over the rounds.
    summary: Vec<Row>,
    ratios: Vec<Ratio>,
}

fn row(r: &RunResult) -> Row {
    Row {
        system: r.system.clone(),
        round: r.round,
        msgs_per_s: r.msgs_per_s,
        mb_per_s: r.mb_per_s,
        publish_p50_ms: r.publish.p50_ms,
        publish_p99_ms: r.publish.p99_ms,
        publish_p999_ms: r.publish.p999_ms,
        e2e_p99_ms: (r.e2e.count > 0).then_some(r.e2e.p99_ms),
        errors: r.errors,
        durability: r.durability.clone(),
        result: Some(r.clone()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn summarize(name: &str, rows: &[&Row]) -> Row {
    let med = |f: fn(&Row) -> f64| median(rows.iter().map(|r| f(r)).collect());
    let e2e: Vec<f64> = rows.iter().filter_map(|r| r.e2e_p99_ms).collect();
    Row {
        system: name.to_string(),
        round: 0,
        msgs_per_s: med(|r| r.msgs_per_s),
        mb_per_s: med(|r| r.mb_per_s),
        publish_p50_ms: med(|r| r.publish_p50_ms),
        publish_p99_ms: med(|r| r.publish_p99_ms),
        publish_p999_ms: med(|r| r.publish_p999_ms),
        e2e_p99_ms: (!e2e.is_empty()).then(|| median(e2e)),
        errors: rows.iter().map(|r| r.errors).sum(),
        durability: rows
            .first()
            .map(|r| r.durability.clone())
            .unwrap_or_default(),
        result: None,
    }
}

/// O_DIRECT writes of `bytes` in batches of the workload's size: the disk's limit, at
/// queue depth one (`depth` 1: write, fdatasync, next) or `depth` (io_uring, one
/// fdatasync per round of `depth` batches).
fn raw_disk(
    w: &Workload,
    args: &Args,
    bytes: u64,
    round: u32,
    depth: usize,
) -> Result<Row, String> {
    let per_batch = ((w.batch_bytes / w.message_bytes).max(1) * w.message_bytes) as u64;
    let total = bytes.max(per_batch);
    let (secs, hist) = if depth <= 1 {
        crate::storage::raw_disk(&args.common.dir, per_batch, total)?
    } else {
        let batch = crate::storage::make_batch(per_batch.max(4096));
        crate::uring::raw_disk_queued(&args.common.dir, &batch, total, depth)?
    };
    let mb_per_s = total as f64 / 1e6 / secs;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let (system, durability) = if depth <= 1 {
        (
            "raw-disk".to_string(),
            format!("O_DIRECT write + fdatasync per {per_batch}-byte batch"),
        )
    } else {
        (
            format!("raw-disk-qd{depth}"),
            format!(
                "O_DIRECT writes of {depth} {per_batch}-byte batches in flight (io_uring), then one fdatasync"
            ),
        )
    };
    Ok(Row {
        system,
        round,
        msgs_per_s: mb_per_s * 1e6 / w.message_bytes as f64,
        mb_per_s,
        publish_p50_ms: ms(0.5),
        publish_p99_ms: ms(0.99),
        publish_p999_ms: ms(0.999),
        e2e_p99_ms: None,
        errors: 0,
        durability,
        result: None,
    })
}

pub fn run(args: Args) -> Result<(), String> {
    let w = args.common.load()?;
    let mut peers = Vec::new();
    for p in &args.peer {
        let peer = match p.as_str() {
            "raw-disk" => Peer::RawDisk,
            other => match System::parse(other)? {
                System::Corelog | System::Kafka => {
                    return Err(format!(
                        "--peer {other}: peers are tansu, nats, redis and raw-disk"
                    ));
                }
                s => Peer::System(s),
            },
        };
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    // Every server must be there before the first run, not found missing an hour in.
    System::Corelog.binary()?;
    for p in &peers {
        if let Peer::System(s) = p {
            s.binary()?;
            s.check_acks(w.acks()?)?;
        }
    }
    let systems: Vec<System> = std::iter::once(System::Corelog)
        .chain(peers.iter().filter_map(|p| match p {
            Peer::System(s) => Some(*s),
            Peer::RawDisk => None,
        }))
        .collect();
    let rounds = args.rounds.max(1);
    let mut runs: Vec<Row> = Vec::new();
    let mut machine = String::new();
    for round in 1..=rounds {
        // Alternate who goes first, so that neither always meets a cold (or a warm) disk.
        let mut order = systems.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for system in order {
            eprintln!("== round {round}/{rounds}: {} on {}", w.name, system.name());
            let server = system.start(&args.common.dir)?;
            let mut r = run::run_workload(
                &w,
                system,
                &server.addr,
                &args.common.dir,
                &server.pids(),
                1,
            )?;
            drop(server);
            r.round = round;
            run::print_result(&r);
            if args.common.strict {
                run::check_complete(&r)?;
            }
            machine = r.machine.clone();
            runs.push(row(&r));
            if system == System::Corelog && peers.contains(&Peer::RawDisk) {
                // The bytes corelog just acknowledged, written raw.
                let bytes = r.messages_acked * w.message_bytes as u64;
                let raw = raw_disk(&w, &args, bytes, round, 1)?;
                println!(
                    "raw-disk: {:.1} MB/s, write+fdatasync p99 {:.3} ms",
                    raw.mb_per_s, raw.publish_p99_ms
                );
                runs.push(raw);
                if args.raw_depth > 1 {
                    let raw = raw_disk(&w, &args, bytes, round, args.raw_depth)?;
                    println!(
                        "{}: {:.1} MB/s, round of writes + fdatasync p99 {:.3} ms",
                        raw.system, raw.mb_per_s, raw.publish_p99_ms
                    );
                    runs.push(raw);
                }
            }
        }
    }
    let queued = format!("raw-disk-qd{}", args.raw_depth);
    let names: Vec<&str> = std::iter::once("corelog")
        .chain(peers.iter().map(|p| p.name()))
        .chain((peers.contains(&Peer::RawDisk) && args.raw_depth > 1).then_some(queued.as_str()))
        .collect();
    let summary: Vec<Row> = names
        .iter()
        .map(|n| {
            let rows: Vec<&Row> = runs.iter().filter(|r| r.system == *n).collect();
            summarize(n, &rows)
        })
        .collect();
    let ours = &summary[0];
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let ratios: Vec<Ratio> = summary[1..]
        .iter()
        .map(|p| Ratio {
            peer: p.system.clone(),
            throughput_ratio: ratio(ours.msgs_per_s, p.msgs_per_s),
            publish_p99_ratio: ratio(ours.publish_p99_ms, p.publish_p99_ms),
            publish_p999_ratio: ratio(ours.publish_p999_ms, p.publish_p999_ms),
        })
        .collect();

    println!();
    println!(
        "{} — median of {rounds} round(s) each, systems run alternately — {machine}",
        w.name
    );
    println!(
        "  {:<14} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10}  durability",
        "system", "msg/s", "MB/s", "pub p50", "pub p99", "pub p99.9", "e2e p99"
    );
    for s in &summary {
        println!(
            "  {:<14} {:>10.0} {:>9.1} {:>10.3} {:>10.3} {:>10.3} {:>10}  {}",
            s.system,
            s.msgs_per_s,
            s.mb_per_s,
            s.publish_p50_ms,
            s.publish_p99_ms,
            s.publish_p999_ms,
            s.e2e_p99_ms.map_or("-".into(), |v| format!("{v:.3}")),
            s.durability
        );
    }
    for r in &ratios {
        println!(
            "  corelog / {}: throughput {:.2}x, publish p99 {:.2}x, p99.9 {:.2}x (throughput > 1 and latency < 1 favour corelog)",
            r.peer, r.throughput_ratio, r.publish_p99_ratio, r.publish_p999_ratio
        );
    }
    args.common.write_json(&Report {
        workload: w.name.clone(),
        machine,
        rounds,
        runs,
        summary,
        ratios,
    })
}
