//! `corelog-bench compare WORKLOAD --peer PEER`: corelog and a peer on the same workload in
//! one run, on equal durability terms, and the ratios.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use serde::Serialize;

use crate::run::{self, RunResult, Workload};

#[derive(ClapArgs)]
pub struct Args {
    pub workload: String,
    /// raw-disk (plain O_DIRECT writes of the same bytes, fdatasync per batch: the
    /// physical limit). tansu, nats and redis drivers are not built yet.
    #[arg(long)]
    pub peer: String,
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    #[arg(long)]
    pub duration: Option<u64>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    system: String,
    msgs_per_s: f64,
    mb_per_s: f64,
    publish_p50_ms: f64,
    publish_p99_ms: f64,
    publish_p999_ms: f64,
    e2e_p99_ms: Option<f64>,
    durability: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<RunResult>,
}

#[derive(Serialize)]
struct Report {
    workload: String,
    machine: String,
    runs: Vec<Row>,
    /// corelog / peer.
    throughput_ratio: f64,
    publish_p99_ratio: f64,
}

pub fn run(args: Args) -> Result<(), String> {
    let mut w = Workload::load(&args.workload)?;
    if let Some(d) = args.duration {
        w.duration_s = d;
    }
    if !matches!(args.peer.as_str(), "raw-disk") {
        return Err(format!(
            "peer {:?}: not built yet (only raw-disk); tansu, nats and redis drivers are still to come",
            args.peer
        ));
    }
    let spawned = run::spawn_corelog(&args.dir)?;
    let ours = run::run_workload(&w, &spawned.addr, "corelog", &args.dir)?;
    drop(spawned);
    run::print_result(&ours);
    let bytes = ours.messages_acked * w.message_bytes as u64;
    let per_batch = (w.batch_bytes / w.message_bytes).max(1) * w.message_bytes;
    let (secs, hist) =
        crate::storage::raw_disk(&args.dir, per_batch as u64, bytes.max(per_batch as u64))?;
    let raw_mb_s = bytes as f64 / 1e6 / secs;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = Report {
        workload: w.name.clone(),
        machine: ours.machine.clone(),
        throughput_ratio: ours.mb_per_s / raw_mb_s,
        publish_p99_ratio: ours.publish.p99_ms / ms(0.99),
        runs: vec![
            Row {
                system: "corelog".into(),
                msgs_per_s: ours.msgs_per_s,
                mb_per_s: ours.mb_per_s,
                publish_p50_ms: ours.publish.p50_ms,
                publish_p99_ms: ours.publish.p99_ms,
                publish_p999_ms: ours.publish.p999_ms,
                e2e_p99_ms: Some(ours.e2e.p99_ms),
                durability: format!("acks={}, fdatasync before every acknowledgement", w.acks),
                result: Some(ours.clone()),
            },
            Row {
                system: "raw-disk".into(),
                msgs_per_s: raw_mb_s * 1e6 / w.message_bytes as f64,
                mb_per_s: raw_mb_s,
                publish_p50_ms: ms(0.5),
                publish_p99_ms: ms(0.99),
                publish_p999_ms: ms(0.999),
                e2e_p99_ms: None,
                durability: format!("O_DIRECT write + fdatasync per {per_batch}-byte batch"),
                result: None,
            },
        ],
    };
    println!(
        "raw-disk: {:.1} MB/s, write+fdatasync p99 {:.3} ms ({} bytes per batch)",
        raw_mb_s,
        ms(0.99),
        per_batch
    );
    println!(
        "corelog / raw-disk: throughput {:.2}, publish p99 {:.2}",
        report.throughput_ratio, report.publish_p99_ratio
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
