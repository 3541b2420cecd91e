//! Property: after any sequence of appends, syncs, truncations, crashes (SimDisk power
//! loss with lost, reordered and torn writes) and reopens, the recovered log is a prefix
//! of what was appended and holds every synced batch.

use corelog_storage::batch::build;
use corelog_storage::{FaultConfig, Log, LogConfig, SimDisk};
use futures_lite::future::block_on;
use proptest::prelude::*;

use crate::contract::read_all;

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, value_len: usize },
    Sync,
    Crash,
    CleanReopen,
    TruncateBack(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..6, 0usize..700).prop_map(|(records, value_len)| Op::Append { records, value_len }),
        3 => Just(Op::Sync),
        2 => Just(Op::Crash),
        1 => Just(Op::CleanReopen),
        1 => (0usize..5).prop_map(Op::TruncateBack),
    ]
}

/// Small segments exercise rolls; large ones with a dense index exercise the active
/// segment's index checkpoints (written once a block of entries piles up).
fn config(large: bool) -> LogConfig {
    LogConfig {
        segment_bytes: if large { 256 * 1024 } else { 12 * 1024 },
        index_interval_bytes: if large { 40 } else { 300 },
        index_checkpoint_bytes: if large { 100 } else { 4096 },
        write_behind_bytes: 4096,
        ..LogConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn recovered_log_is_a_prefix_holding_every_synced_batch(
        seed in any::<u64>(),
        persist in 0.0f64..1.0,
        large in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        block_on(async {
            let faults = FaultConfig { persist_probability: persist, torn_probability: 0.5, ..FaultConfig::default() };
            let disk = SimDisk::with_faults(seed, faults);
            let mut log = Log::open(disk.clone(), config(large)).await.unwrap();
            // The model: batches as stored, and how many of them are synced.
            let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut synced = 0usize;
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append { records, value_len } => {
                        let values: Vec<Vec<u8>> = (0..records)
                            .map(|r| vec![(n * 7 + r) as u8; value_len])
                            .collect();
                        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
                        let mut b = build::batch(&refs, n as i64);
                        let info = log.append(&mut b, n as i64).await.unwrap();
                        model.push((info.base_offset, b));
                    }
                    Op::Sync => {
                        let durable = log.sync().await.unwrap();
                        prop_assert_eq!(durable, log.next_offset());
                        synced = model.len();
                    }
                    Op::TruncateBack(k) => {
                        let keep = model.len().saturating_sub(k);
                        let to = model.get(keep).map_or(log.next_offset(), |(o, _)| *o);
                        log.truncate_to(to).await.unwrap();
                        model.truncate(keep);
                        synced = synced.min(keep);
                    }
                    Op::Crash | Op::CleanReopen => {
                        if matches!(op, Op::Crash) {
                            drop(log);
                            disk.crash();
                        } else {
                            log.close().await.unwrap();
                            synced = model.len();
                        }
                        log = Log::open(disk.clone(), config(large)).await.unwrap();
                        let got = read_all(&log).await;
                        prop_assert!(got.len() >= synced, "lost synced batches: {} < {}", got.len(), synced);
                        prop_assert!(got.len() <= model.len());
                        prop_assert_eq!(&got[..], &model[..got.len()]);
                        prop_assert_eq!(log.next_offset(), got.last().map_or(0, |(o, b)| {
                            o + corelog_storage::batch::BatchHeader::parse(b).unwrap().last_offset_delta as u64 + 1
                        }));
                        model.truncate(got.len());
                        synced = got.len(); // open makes what it recovered durable
                    }
                }
            }
            Ok(())
        })?;
    }
}
