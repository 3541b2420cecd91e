//! `corelog-bench storage`: the storage engine against the physical limit.
//!
//! For each batch size, appends batches of 1 KiB records through the real engine
//! (validation, offset patching, index, direct I/O, one fdatasync per batch), and, in the
//! same run, writes the same bytes with plain aligned O_DIRECT writes and one fdatasync per
//! batch to a scratch file. Both are preallocated the same way. The ratio of the two is the
//! engine's overhead; the latency columns are per append+sync.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args as ClapArgs;
use corelog_storage::batch::build;
use corelog_storage::{GlommioDisk, Log, LogConfig};
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde::Serialize;

const BLOCK: u64 = 4096;
const RECORD_BYTES: usize = 1024;

#[derive(ClapArgs)]
pub struct Args {
    /// Bytes to write per batch size and per side, e.g. 2GiB, 256MiB.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    size: u64,
    /// Batch sizes to run, comma separated.
    #[arg(long, default_value = "16KiB,64KiB,256KiB", value_delimiter = ',', value_parser = parse_size)]
    batch_sizes: Vec<u64>,
    /// Directory for the scratch files (must be on the disk to measure, not tmpfs).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The device's ceiling beside them: the same bytes at this many writes in flight
    /// through io_uring, one fdatasync per round (column raw qdN); 0 to skip. At 1 it is the
    /// queue-depth-one loop without the log's tail-block rewrite or any copy.
    #[arg(long, default_value_t = 8)]
    raw_depth: usize,
}

#[derive(Serialize, Clone)]
struct Row {
    batch_bytes: u64,
    batches: u64,
    engine_mb_s: f64,
    raw_mb_s: f64,
    ratio: f64,
    sync_p50_us: u64,
    sync_p99_us: u64,
    sync_p999_us: u64,
    sync_max_us: u64,
    raw_sync_p50_us: u64,
    raw_sync_p99_us: u64,
    raw_sync_p999_us: u64,
    raw_sync_max_us: u64,
    sync_p99_vs_raw: f64,
    /// MB/s at `raw_depth` writes in flight (io_uring, one fdatasync per round).
    raw_queued_mb_s: Option<f64>,
    raw_depth: usize,
}

#[derive(Serialize)]
struct Report {
    machine: String,
    size_bytes: u64,
    record_bytes: usize,
    results: Vec<Row>,
}

pub fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("corelog-bench-storage-")
        .tempdir_in(&args.dir)
        .map_err(|e| format!("scratch dir in {}: {e}", args.dir.display()))?;
    let machine = machine_description(scratch.path());
    println!(
        "corelog-bench storage: {} per side, 1 KiB records, fdatasync per batch",
        human(args.size)
    );
    println!("machine: {machine}");
    println!(
        "{:>9} {:>12} {:>10} {:>6}   {:>30}   {:>30} {:>14}",
        "batch",
        "engine MB/s",
        "raw MB/s",
        "ratio",
        "engine p50/p99/p999/max us",
        "raw p50/p99/p999/max us",
        format!("raw qd{} MB/s", args.raw_depth)
    );
    let mut rows = Vec::new();
    for &batch_bytes in &args.batch_sizes {
        let dir = scratch.path().join(format!("b{batch_bytes}"));
        let size = args.size;
        let queued_dir = dir.clone();
        let mut row = LocalExecutorBuilder::new(Placement::Fixed(0))
            .name("bench")
            .spawn(move || async move { measure(&dir, size, batch_bytes).await })
            .map_err(|e| format!("executor: {e}"))?
            .join()
            .map_err(|e| format!("executor: {e}"))??;
        if args.raw_depth > 0 {
            let batch = make_batch(batch_bytes);
            let total = row.batches * batch.len() as u64;
            let (secs, _) =
                crate::uring::raw_disk_queued(&queued_dir, &batch, total, args.raw_depth)?;
            row.raw_queued_mb_s = Some(total as f64 / secs / 1e6);
            row.raw_depth = args.raw_depth;
        }
        println!(
            "{:>9} {:>12.1} {:>10.1} {:>6.2}   {:>30}   {:>30} {:>14}",
            human(batch_bytes),
            row.engine_mb_s,
            row.raw_mb_s,
            row.ratio,
            format!(
                "{}/{}/{}/{}",
                row.sync_p50_us, row.sync_p99_us, row.sync_p999_us, row.sync_max_us
            ),
            format!(
                "{}/{}/{}/{}",
                row.raw_sync_p50_us, row.raw_sync_p99_us, row.raw_sync_p999_us, row.raw_sync_max_us
            ),
            row.raw_queued_mb_s
                .map_or("-".to_string(), |v| format!("{v:.1}")),
        );
        rows.push(row);
    }
    if let Some(path) = &args.json {
        let report = Report {
            machine,
            size_bytes: args.size,
            record_bytes: RECORD_BYTES,
            results: rows,
        };
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One batch of 1 KiB records, about `batch_bytes` long in all.
pub fn make_batch(batch_bytes: u64) -> Vec<u8> {
    let records = ((batch_bytes as usize - 61) / (RECORD_BYTES + 8)).max(1);
    let mut rng = fastrand::Rng::with_seed(batch_bytes);
    let values: Vec<Vec<u8>> = (0..records)
        .map(|_| {
            (0..RECORD_BYTES)
                .map(|_| rng.alphanumeric() as u8)
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    build::batch(&refs, 0)
}

async fn measure(dir: &Path, size: u64, batch_bytes: u64) -> Result<Row, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let batch = make_batch(batch_bytes);
    let batches = (size / batch.len() as u64).max(1);
    let config = LogConfig::default();

    // Raw first: the engine then cannot profit from anything the raw run warmed.
    let (raw_secs, raw_hist) = raw_writes(
        &dir.join("raw.scratch"),
        &batch,
        batches,
        config.segment_bytes,
    )
    .await?;
    std::fs::remove_file(dir.join("raw.scratch")).ok();
    let (engine_secs, engine_hist) =
        engine_writes(&dir.join("log"), &batch, batches, config).await?;
    std::fs::remove_dir_all(dir.join("log")).ok();

    let bytes = (batches * batch.len() as u64) as f64;
    let engine_mb_s = bytes / engine_secs / 1e6;
    let raw_mb_s = bytes / raw_secs / 1e6;
    Ok(Row {
        batch_bytes,
        batches,
        engine_mb_s,
        raw_mb_s,
        ratio: engine_mb_s / raw_mb_s,
        sync_p50_us: engine_hist.value_at_quantile(0.5),
        sync_p99_us: engine_hist.value_at_quantile(0.99),
        sync_p999_us: engine_hist.value_at_quantile(0.999),
        sync_max_us: engine_hist.max(),
        raw_sync_p50_us: raw_hist.value_at_quantile(0.5),
        raw_sync_p99_us: raw_hist.value_at_quantile(0.99),
        raw_sync_p999_us: raw_hist.value_at_quantile(0.999),
        raw_sync_max_us: raw_hist.max(),
        sync_p99_vs_raw: engine_hist.value_at_quantile(0.99) as f64
            / raw_hist.value_at_quantile(0.99).max(1) as f64,
        raw_queued_mb_s: None,
        raw_depth: 0,
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

async fn engine_writes(
    dir: &Path,
    batch: &[u8],
    batches: u64,
    config: LogConfig,
) -> Result<(f64, Histogram<u64>), String> {
    let disk = GlommioDisk::open_dir(dir)
        .await
        .map_err(|e| e.to_string())?;
    let mut log = Log::open(disk, config).await.map_err(|e| e.to_string())?;
    // The same buffer every time: append patches only the base offset, outside the CRC.
    let mut buf = batch.to_vec();
    let mut hist = histogram();
    let start = Instant::now();
    for _ in 0..batches {
        let t = Instant::now();
        log.append(&mut buf, 0).await.map_err(|e| e.to_string())?;
        log.sync().await.map_err(|e| e.to_string())?;
        hist.saturating_record(t.elapsed().as_micros() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    log.close().await.map_err(|e| e.to_string())?;
    Ok((secs, hist))
}

/// The physical limit: the same bytes, appended as a byte stream with aligned O_DIRECT
/// writes (the partial tail block rewritten each time, as any direct-I/O log must) and one
/// fdatasync per batch. Preallocated in segment-sized steps like the engine's segments.
async fn raw_writes(
    path: &Path,
    batch: &[u8],
    batches: u64,
    prealloc_step: u64,
) -> Result<(f64, Histogram<u64>), String> {
    // glommio's io-poll probe trap: make the first DMA file it sees non-empty.
    std::fs::write(path, vec![0u8; BLOCK as usize]).map_err(|e| e.to_string())?;
    let file: DmaFile = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| e.to_string())?;
    file.truncate(0).await.map_err(|e| e.to_string())?;
    let mut hist = histogram();
    let mut tail: Vec<u8> = Vec::new();
    let mut pos: u64 = 0;
    let mut preallocated = 0u64;
    let start = Instant::now();
    for _ in 0..batches {
        let t = Instant::now();
        if pos + batch.len() as u64 > preallocated {
            preallocated += prealloc_step;
            file.pre_allocate(preallocated, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        let write_at = pos / BLOCK * BLOCK;
        let len = tail.len() + batch.len();
        let mut buf = file.alloc_dma_buffer(len.div_ceil(BLOCK as usize) * BLOCK as usize);
        let bytes = buf.as_bytes_mut();
        bytes[..tail.len()].copy_from_slice(&tail);
        bytes[tail.len()..len].copy_from_slice(batch);
        bytes[len..].fill(0);
        pos += batch.len() as u64;
        let full = (pos / BLOCK * BLOCK - write_at) as usize;
        tail.clear();
        tail.extend_from_slice(&bytes[full..len]);
        file.write_at(buf, write_at)
            .await
            .map_err(|e| e.to_string())?;
        file.fdatasync().await.map_err(|e| e.to_string())?;
        hist.saturating_record(t.elapsed().as_micros() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    file.close().await.map_err(|e| e.to_string())?;
    Ok((secs, hist))
}

/// The raw-disk peer of `compare`: `total_bytes` written in `batch_bytes` batches with
/// plain aligned O_DIRECT writes and one fdatasync per batch, in a scratch file under
/// `dir`. Returns (seconds, per-batch write+sync latency in microseconds).
pub fn raw_disk(
    dir: &Path,
    batch_bytes: u64,
    total_bytes: u64,
) -> Result<(f64, Histogram<u64>), String> {
    let path = dir.join(format!("corelog-bench-raw-{}.tmp", std::process::id()));
    let batch = make_batch(batch_bytes.max(BLOCK));
    let batches = (total_bytes / batch.len() as u64).max(1);
    let p = path.clone();
    let out = LocalExecutorBuilder::new(Placement::Fixed(0))
        .name("raw-disk")
        .spawn(move || async move { raw_writes(&p, &batch, batches, 1 << 30).await })
        .map_err(|e| format!("executor: {e}"))?
        .join()
        .map_err(|e| format!("executor: {e}"))?;
    let _ = std::fs::remove_file(&path);
    out
}

/// "2GiB" -> 2147483648. Accepts B, KiB, MiB, GiB, KB, MB, GB, or a plain number.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((n * mult as f64) as u64)
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Cores, kernel and the filesystem under `dir`, in one line.
pub fn machine_description(dir: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let fs = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && dir.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {}", f[2], f[0])))
        })
        .max()
        .map_or_else(|| "unknown fs".to_string(), |(_, s)| s);
    format!("{cores} cores, Linux {}, {fs}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("16KiB").unwrap(), 16 << 10);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn bench_batches_are_valid_and_near_the_requested_size() {
        for size in [16u64 << 10, 64 << 10, 256 << 10] {
            let b = make_batch(size);
            corelog_storage::batch::validate(&b, 1 << 20).unwrap();
            assert!(
                b.len() as u64 <= size && b.len() as u64 > size * 9 / 10,
                "{} vs {size}",
                b.len()
            );
        }
    }
}
