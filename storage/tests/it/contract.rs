//! The contract every `Disk` must let the log keep. Each case is one async fn generic over
//! the disk, run twice: on SimDisk (block_on) and on real files with O_DIRECT (glommio).

use corelog_storage::batch::{self, BatchHeader, build};
use corelog_storage::{Disk, DiskFile, Log, LogConfig, SimDisk, StorageError};
use futures_lite::future::block_on;

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sim_disk {
            $(#[test] fn $name() { futures_lite::future::block_on(super::$name(corelog_storage::SimDisk::new(7))) })*
        }
        mod on_real_files {
            $(#[test] fn $name() { crate::with_glommio_disk(|d| super::$name(d)) })*
        }
    };
}

contract!(
    appended_batches_read_back_exactly_after_reopen,
    bad_batches_are_refused_and_never_stored,
    segments_roll_and_reads_cross_them,
    retention_deletes_oldest_segments_and_moves_the_start,
    delete_before_drops_only_whole_segments_below_the_offset,
    offset_for_timestamp_finds_the_first_record_at_or_after,
    truncate_to_drops_the_suffix_durably,
    a_missing_or_corrupt_index_is_rebuilt,
    garbage_after_the_tail_is_cut_on_open,
    a_flipped_bit_is_never_served,
    read_honours_max_bytes_and_end_offset,
    segments_roll_by_age,
    append_at_keeps_assigned_offsets_and_refuses_gaps,
    advance_start_hides_records_below_it_and_survives_reopen,
    a_sync_point_proves_what_was_written_before_it_and_nothing_else,
);

fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 512,
        write_behind_bytes: 8 * 1024,
        ..LogConfig::default()
    }
}

/// Batch `i` of a test: 1..=4 records whose values name `i`, timestamps from `ts`.
fn test_batch(i: u64, ts: i64) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..(i % 4 + 1))
        .map(|r| {
            format!(
                "batch-{i}-record-{r}-{}",
                "x".repeat((i * 37 % 300) as usize)
            )
            .into_bytes()
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    build::batch(&refs, ts)
}

/// Every batch from the log start to the end, as (base offset, bytes).
pub async fn read_all<D: Disk>(log: &Log<D>) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = log.log_start_offset();
    while from < log.next_offset() {
        let got = log.read(from, 64 * 1024).await.expect("read");
        assert!(got.next_offset > from, "read made no progress at {from}");
        let mut rest = &got.bytes[..];
        while !rest.is_empty() {
            let h = BatchHeader::parse(rest).expect("stored batch parses");
            out.push((h.base_offset as u64, rest[..h.size].to_vec()));
            rest = &rest[h.size..];
        }
        from = got.next_offset;
    }
    out
}

/// The names of the files in `disk` ending in `suffix`, in segment order.
async fn files<D: Disk>(disk: &D, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = disk
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// The log end after the batches `written`: one past their last record.
fn end_of(written: &[(u64, Vec<u8>)]) -> u64 {
    let (base, bytes) = written.last().expect("something written");
    base + BatchHeader::parse(bytes).unwrap().last_offset_delta as u64 + 1
}

/// Appends `n` test batches, returning them as stored (offsets patched).
async fn append_n<D: Disk>(log: &mut Log<D>, first: u64, n: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for i in first..first + n {
        let mut b = test_batch(i, 1_000 + i as i64 * 10);
        let info = log.append(&mut b, 0).await.expect("append");
        out.push((info.base_offset, b));
    }
    out
}

async fn appended_batches_read_back_exactly_after_reopen<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let written = append_n(&mut log, 0, 40).await;
    assert_eq!(written[0].0, 0);
    let total_records: u64 = (0..40).map(|i| i % 4 + 1).sum();
    assert_eq!(log.next_offset(), total_records);
    // Reads see appended data before any sync.
    assert_eq!(read_all(&log).await, written);
    assert_eq!(log.sync().await.unwrap(), total_records);
    assert_eq!(log.durable_offset(), total_records);
    drop(log); // no close: synced data must not depend on a clean shutdown

    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    assert_eq!(log.next_offset(), total_records);
    assert_eq!(read_all(&log).await, written);
    // A read from inside a batch starts at the batch holding the offset.
    // Batch 5 holds two records.
    let got = log.read(written[5].0 + 1, 1).await.unwrap();
    assert_eq!(got.bytes, written[5].1);
    assert!(matches!(
        log.read(total_records + 1, 100).await,
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert!(log.read(total_records, 100).await.unwrap().bytes.is_empty());
    // Appends continue after the reopen, and a clean close keeps them too.
    let more = append_n(&mut log, 40, 3).await;
    log.close().await.unwrap();
    let log = Log::open(disk, small()).await.unwrap();
    let all = read_all(&log).await;
    assert_eq!(all.len(), 43);
    assert_eq!(&all[40..], &more[..]);
}

async fn bad_batches_are_refused_and_never_stored<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    append_n(&mut log, 0, 2).await;
    let end = log.next_offset();
    let good = test_batch(9, 0);

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    let err = log.append(&mut flipped, 0).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Batch(batch::BatchError::CrcMismatch { .. })
        ),
        "{err}"
    );

    let mut magic1 = good.clone();
    magic1[16] = 1;
    assert!(matches!(
        log.append(&mut magic1, 0).await,
        Err(StorageError::Batch(batch::BatchError::BadMagic(1)))
    ));
    let mut short = good[..good.len() - 3].to_vec();
    assert!(log.append(&mut short, 0).await.is_err());
    let mut huge = build::batch(&[&vec![7u8; 2 << 20]], 0);
    assert!(matches!(
        log.append(&mut huge, 0).await,
        Err(StorageError::Batch(batch::BatchError::TooLarge { .. }))
    ));
    assert_eq!(log.next_offset(), end, "a refused batch takes no offset");
    log.sync().await.unwrap();
    drop(log);
    let log = Log::open(disk, small()).await.unwrap();
    assert_eq!(log.next_offset(), end);
    assert_eq!(read_all(&log).await.len(), 2);
}

async fn segments_roll_and_reads_cross_them<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let written = append_n(&mut log, 0, 120).await;
    assert!(
        log.segment_count() > 3,
        "16 KiB segments must roll: {}",
        log.segment_count()
    );
    let logs = files(&disk, ".log").await.len();
    assert_eq!(logs, log.segment_count());
    assert_eq!(read_all(&log).await, written);
    log.sync().await.unwrap();
    drop(log);
    let log = Log::open(disk, small()).await.unwrap();
    assert_eq!(read_all(&log).await, written);
}

async fn retention_deletes_oldest_segments_and_moves_the_start<D: Disk + Clone>(disk: D) {
    let config = LogConfig {
        retention_bytes: Some(40 * 1024),
        retention_ms: Some(60_000),
        ..small()
    };
    let mut log = Log::open(disk.clone(), config.clone()).await.unwrap();
    let written = append_n(&mut log, 0, 150).await;
    log.sync().await.unwrap();
    let before = log.segment_count();
    // Timestamps are 1_000.. 2_500: at now = 10_000 nothing is older than 60 s.
    let deleted = log.enforce_retention(10_000).await.unwrap();
    assert!(deleted > 0 && log.segment_count() == before - deleted);
    assert!(log.size_bytes() >= 40 * 1024 - 16 * 1024 && log.size_bytes() < 40 * 1024 + 16 * 1024);
    let start = log.log_start_offset();
    assert!(start > 0);
    assert!(matches!(
        log.read(0, 100).await,
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    let kept: Vec<_> = written
        .iter()
        .filter(|(o, _)| *o >= start)
        .cloned()
        .collect();
    assert_eq!(read_all(&log).await, kept);
    // By age: everything but the active segment is older than a minute at now = 100 s.
    log.enforce_retention(100_000).await.unwrap();
    assert_eq!(log.segment_count(), 1);
    let start = log.log_start_offset();
    drop(log);
    let log = Log::open(disk, config).await.unwrap();
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(log.next_offset(), end_of(&written));
}

async fn offset_for_timestamp_finds_the_first_record_at_or_after<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    // Batch i holds records with timestamps 1000 + 10 i + r.
    let written = append_n(&mut log, 0, 100).await;
    for (i, (base, b)) in written.iter().enumerate().step_by(7) {
        let ts = 1_000 + i as i64 * 10;
        let hit = log.offset_for_timestamp(ts).await.unwrap().unwrap();
        assert_eq!((hit.offset, hit.timestamp), (*base, ts));
        let count = BatchHeader::parse(b).unwrap().record_count;
        if count > 1 {
            let hit = log.offset_for_timestamp(ts + 1).await.unwrap().unwrap();
            assert_eq!((hit.offset, hit.timestamp), (base + 1, ts + 1));
        }
    }
    assert!(log.offset_for_timestamp(1_000_000).await.unwrap().is_none());
    assert_eq!(
        log.offset_for_timestamp(0).await.unwrap().unwrap().offset,
        0
    );
}

async fn truncate_to_drops_the_suffix_durably<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let written = append_n(&mut log, 0, 90).await;
    log.sync().await.unwrap();
    // Batch 47 holds four records: truncating inside it drops the whole batch.
    let cut = &written[47];
    log.truncate_to(cut.0 + 1).await.unwrap();
    let expect_end = cut.0;
    assert_eq!(log.next_offset(), expect_end);
    let kept: Vec<_> = written
        .iter()
        .filter(|(o, _)| *o < expect_end)
        .cloned()
        .collect();
    assert_eq!(read_all(&log).await, kept);
    // New appends take the freed offsets, and all of it survives a reopen without close.
    let more = append_n(&mut log, 500, 5).await;
    assert_eq!(more[0].0, expect_end);
    log.sync().await.unwrap();
    drop(log);
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let mut expect = kept.clone();
    expect.extend(more);
    assert_eq!(read_all(&log).await, expect);
    // Below the start: the log restarts empty at that offset.
    log.truncate_to(0).await.unwrap();
    assert_eq!(
        (
            log.log_start_offset(),
            log.next_offset(),
            log.segment_count()
        ),
        (0, 0, 1)
    );
    drop(log);
    let log = Log::open(disk, small()).await.unwrap();
    assert_eq!(log.next_offset(), 0);
}

async fn a_missing_or_corrupt_index_is_rebuilt<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let written = append_n(&mut log, 0, 80).await;
    log.close().await.unwrap();
    let indexes = files(&disk, ".index").await;
    assert!(indexes.len() >= 3);
    disk.remove(&indexes[0]).await.unwrap();
    let f = disk.open(&indexes[1]).await.unwrap();
    f.write_at(0, &[0xA5; 4096]).await.unwrap();
    f.sync().await.unwrap();
    f.close().await.unwrap();
    let log = Log::open(disk.clone(), small()).await.unwrap();
    assert_eq!(read_all(&log).await, written);
    for (i, (o, _)) in written.iter().enumerate().step_by(9) {
        let got = log.read(*o, 1).await.unwrap();
        assert_eq!(got.bytes, written[i].1);
    }
    drop(log);
    // The rebuilt index was written back: present and readable again.
    assert!(disk.list().await.unwrap().contains(&indexes[0]));
    let f = disk.open(&indexes[1]).await.unwrap();
    let head = f.read_at(0, 20).await.unwrap();
    assert_ne!(head, vec![0xA5; 20]);
}

async fn garbage_after_the_tail_is_cut_on_open<D: Disk + Clone>(disk: D) {
    let config = LogConfig {
        preallocate: false,
        ..small()
    };
    let mut log = Log::open(disk.clone(), config.clone()).await.unwrap();
    let written = append_n(&mut log, 0, 10).await;
    log.close().await.unwrap();
    let logs = files(&disk, ".log").await;
    let active = logs.last().unwrap().clone();
    let f = disk.open(&active).await.unwrap();
    let size = f.size().await.unwrap();
    // A plausible-looking but torn batch header, then noise, after the last block.
    let mut junk = vec![0x5Au8; 8192];
    junk[..8].copy_from_slice(&999i64.to_be_bytes());
    junk[8..12].copy_from_slice(&5000i32.to_be_bytes());
    f.write_at(size, &junk).await.unwrap();
    f.sync().await.unwrap();
    f.close().await.unwrap();
    let mut log = Log::open(disk.clone(), config.clone()).await.unwrap();
    assert_eq!(read_all(&log).await, written);
    let more = append_n(&mut log, 10, 2).await;
    log.sync().await.unwrap();
    drop(log);
    let log = Log::open(disk, config).await.unwrap();
    let all = read_all(&log).await;
    assert_eq!(all.len(), 12);
    assert_eq!(&all[10..], &more[..]);
}

async fn a_flipped_bit_is_never_served<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let written = append_n(&mut log, 0, 6).await;
    log.close().await.unwrap();
    let name = files(&disk, ".log").await.remove(0);
    // Flip one bit inside the records of the third batch, through the disk itself.
    let pos: usize = written[..2].iter().map(|(_, b)| b.len()).sum::<usize>() + 70;
    let f = disk.open(&name).await.unwrap();
    let mut block = f.read_at(0, 4096).await.unwrap();
    block.resize(4096, 0);
    block[pos] ^= 0x08;
    f.write_at(0, &block).await.unwrap();
    f.sync().await.unwrap();
    f.close().await.unwrap();
    let log = Log::open(disk, small()).await.unwrap();
    assert_eq!(log.read(written[1].0, 1).await.unwrap().bytes, written[1].1);
    let err = log.read(written[2].0, 1 << 20).await.unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    // A read that would include the bad batch fails rather than serving it.
    assert!(log.read(written[0].0, 1 << 20).await.is_err());
    assert_eq!(log.read(written[3].0, 1).await.unwrap().bytes, written[3].1);
}

async fn read_honours_max_bytes_and_end_offset<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk, small()).await.unwrap();
    let written = append_n(&mut log, 0, 8).await;
    let two = written[0].1.len() + written[1].1.len();
    let got = log.read(0, two).await.unwrap();
    assert_eq!(
        got.bytes,
        [written[0].1.clone(), written[1].1.clone()].concat()
    );
    assert_eq!(got.next_offset, written[2].0);
    // max_bytes smaller than one batch still returns that batch.
    assert_eq!(log.read(0, 1).await.unwrap().bytes, written[0].1);
    // Nothing at or past the end offset (the high watermark) is returned.
    let got = log.read_up_to(0, 1 << 20, written[3].0).await.unwrap();
    assert_eq!(got.next_offset, written[3].0);
    assert!(
        log.read_up_to(written[3].0, 1 << 20, written[3].0)
            .await
            .unwrap()
            .bytes
            .is_empty()
    );
}

/// SimDisk-only: bit rot injected below the log, as the simulator will do.
#[test]
fn sim_disk_bit_rot_is_caught_by_crc() {
    block_on(async {
        let disk = SimDisk::new(11);
        let mut log = Log::open(disk.clone(), small()).await.unwrap();
        // Enough batches to seal the first segment: a sealed segment is read from the
        // disk, while the active one's recent bytes are also kept in memory (where rot
        // below cannot reach them).
        let written = append_n(&mut log, 0, 80).await;
        log.sync().await.unwrap();
        assert!(written[..2].iter().map(|(_, b)| b.len()).sum::<usize>() < 4096);
        let logs = files(&disk, ".log").await;
        assert!(logs.len() >= 2, "{logs:?}");
        let name = logs[0].clone();
        disk.flip_bit(&name, written[0].1.len() as u64 + 65, 2);
        assert!(matches!(
            log.read(written[1].0, 1).await,
            Err(StorageError::Corrupt { .. })
        ));
        assert_eq!(log.read(written[0].0, 1).await.unwrap().bytes, written[0].1);
    })
}

/// Real files: a log written and closed by one executor is read back by another, proving
/// that direct-I/O reads work on this machine (glommio's io-poll probe trap).
#[test]
fn real_files_read_back_in_a_fresh_executor() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    let written = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let disk = corelog_storage::GlommioDisk::open_dir(&p).await.unwrap();
            let mut log = Log::open(disk, small()).await.unwrap();
            let w = append_n(&mut log, 0, 30).await;
            log.close().await.unwrap();
            w
        })
        .unwrap()
        .join()
        .unwrap();
    let read = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let disk = corelog_storage::GlommioDisk::open_dir(&path).await.unwrap();
            let log = Log::open(disk, small()).await.unwrap();
            read_all(&log).await
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(read, written);
}

async fn segments_roll_by_age<D: Disk + Clone>(disk: D) {
    let config = LogConfig {
        segment_ms: Some(1_000),
        ..LogConfig::default()
    };
    let mut log = Log::open(disk.clone(), config.clone()).await.unwrap();
    let mut b = test_batch(1, 0);
    log.append(&mut b, 10_000).await.unwrap();
    log.append(&mut b, 10_999).await.unwrap();
    assert_eq!(log.segment_count(), 1, "younger than segment_ms: no roll");
    log.append(&mut b, 11_000).await.unwrap();
    assert_eq!(log.segment_count(), 2, "a segment segment_ms old rolls");
    log.sync().await.unwrap();
    drop(log);
    let log = Log::open(disk, config).await.unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(read_all(&log).await.len(), 3);
}

async fn append_at_keeps_assigned_offsets_and_refuses_gaps<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let mut b = test_batch(2, 0); // three records
    batch::set_base_offset(&mut b, 0);
    batch::set_partition_leader_epoch(&mut b, 4);
    log.append_at(bytes::Bytes::from(b.clone()), 0)
        .await
        .unwrap();
    assert_eq!(log.next_offset(), 3);
    batch::set_base_offset(&mut b, 5);
    assert!(matches!(
        log.append_at(bytes::Bytes::from(b.clone()), 0).await,
        Err(StorageError::NotNextOffset { .. })
    ));
    batch::set_base_offset(&mut b, 3);
    log.append_at(bytes::Bytes::from(b.clone()), 0)
        .await
        .unwrap();
    log.sync().await.unwrap();
    drop(log);
    let log = Log::open(disk, small()).await.unwrap();
    let all = read_all(&log).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].1, b, "stored byte for byte, epoch included");
    assert_eq!(
        BatchHeader::parse(&all[1].1)
            .unwrap()
            .partition_leader_epoch,
        4
    );
}

/// A sync started with `write_pending` covers what was appended before it, not what is
/// appended and written while it runs, and proves nothing once a truncation came between.
async fn a_sync_point_proves_what_was_written_before_it_and_nothing_else<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let a = append_n(&mut log, 0, 5).await;
    let p1 = log.write_pending().await.unwrap().expect("appends to sync");
    assert_eq!(p1.end(), end_of(&a));
    // Written beside the sync in flight.
    let b = append_n(&mut log, 5, 3).await;
    log.write().await.unwrap();
    p1.wait().await.unwrap();
    assert_eq!(log.complete_sync(&p1), Some(end_of(&a)));
    assert_eq!(log.durable_offset(), end_of(&a), "not what came after it");
    let p2 = log.write_pending().await.unwrap().expect("b to sync");
    assert_eq!(p2.end(), end_of(&b));
    assert!(log.write_pending().await.unwrap().is_none(), "nothing new");
    p2.wait().await.unwrap();
    assert_eq!(log.complete_sync(&p2), Some(end_of(&b)));
    // A truncation between a sync's start and its end voids it.
    append_n(&mut log, 8, 2).await;
    let p3 = log.write_pending().await.unwrap().expect("c to sync");
    log.truncate_to(end_of(&b)).await.unwrap();
    p3.wait().await.unwrap();
    assert_eq!(log.complete_sync(&p3), None);
    assert_eq!(log.durable_offset(), end_of(&b));
    drop(log);
    let log = Log::open(disk, small()).await.unwrap();
    let all = read_all(&log).await;
    assert_eq!(all.len(), 8);
    assert_eq!(&all[..5], &a[..]);
    assert_eq!(&all[5..], &b[..]);
}

/// SimDisk-only: a power loss while a sync runs keeps what it covers (once it ended) and
/// may lose what was written after it started.
#[test]
fn writes_made_while_a_sync_runs_wait_for_the_next_one() {
    block_on(async {
        let faults = corelog_storage::FaultConfig {
            persist_probability: 0.0,
            torn_probability: 0.0,
            ..Default::default()
        };
        let disk = SimDisk::with_faults(3, faults);
        let mut log = Log::open(disk.clone(), small()).await.unwrap();
        let a = append_n(&mut log, 0, 4).await;
        let p = log.write_pending().await.unwrap().expect("appends to sync");
        p.wait().await.unwrap();
        append_n(&mut log, 4, 4).await;
        log.write().await.unwrap();
        assert_eq!(log.complete_sync(&p), Some(end_of(&a)));
        disk.crash();
        let log = Log::open(disk, small()).await.unwrap();
        assert_eq!(read_all(&log).await, a, "exactly what the sync covered");
    })
}

/// SimDisk-only: bits flipped in transit (not stored) never shorten the log at recovery
/// and are never served: reads fail with `Corrupt` instead, and succeed on retry.
///
/// One exception, stated rather than hidden: `partitionLeaderEpoch` (bytes 12..16) is,
/// as in Kafka, outside the batch CRC, and storage has nothing to check it against; a flip
/// there is served. Replication must not trust it from disk (see docs/internals/replication.md).
#[test]
fn bits_flipped_in_transit_neither_cut_the_log_nor_get_served() {
    block_on(async {
        let disk = SimDisk::new(12);
        let mut log = Log::open(disk.clone(), small()).await.unwrap();
        let written = append_n(&mut log, 0, 60).await;
        log.close().await.unwrap();
        disk.set_faults(corelog_storage::FaultConfig {
            read_flip_probability: 0.05,
            ..corelog_storage::FaultConfig::default()
        });
        let (mut corrupt_reads, mut epoch_flips_served) = (0, 0);
        for _ in 0..20 {
            let log = Log::open(disk.clone(), small()).await.unwrap();
            assert_eq!(log.next_offset(), end_of(&written));
            for (base, bytes) in &written {
                loop {
                    match log.read(*base, 1).await {
                        Ok(got) => {
                            let differ: Vec<usize> = (0..bytes.len())
                                .filter(|&i| got.bytes.get(i) != Some(&bytes[i]))
                                .collect();
                            assert_eq!(got.bytes.len(), bytes.len());
                            assert!(
                                differ.iter().all(|i| (12..16).contains(i)),
                                "a read returned wrong bytes at {differ:?}"
                            );
                            epoch_flips_served += usize::from(!differ.is_empty());
                            break;
                        }
                        Err(e @ StorageError::Corrupt { .. }) => {
                            corrupt_reads += 1;
                            assert!(corrupt_reads < 10_000, "reads keep failing: {e}");
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            }
        }
        assert!(corrupt_reads > 0, "the fault must have fired");
        eprintln!("{corrupt_reads} corrupt reads refused, {epoch_flips_served} epoch flips served");
    })
}

/// SimDisk-only: group commit. However many appends come before it, one `sync` is one
/// fdatasync of the log file; a `sync` with nothing new is none.
#[test]
fn many_appends_share_one_fdatasync() {
    block_on(async {
        let disk = SimDisk::new(13);
        let mut log = Log::open(disk.clone(), LogConfig::default()).await.unwrap();
        let name = files(&disk, ".log").await.remove(0);
        let before = disk.sync_count(&name);
        let written = append_n(&mut log, 0, 50).await;
        assert_eq!(disk.sync_count(&name), before, "appends alone never sync");
        let durable = log.sync().await.unwrap();
        assert_eq!(
            disk.sync_count(&name),
            before + 1,
            "50 appends, one fdatasync"
        );
        assert_eq!(durable, log.next_offset());
        log.sync().await.unwrap();
        assert_eq!(
            disk.sync_count(&name),
            before + 1,
            "nothing new: no fdatasync"
        );
        disk.crash();
        let log = Log::open(disk, LogConfig::default()).await.unwrap();
        assert_eq!(read_all(&log).await, written, "all 50 survive the crash");
    })
}

async fn delete_before_drops_only_whole_segments_below_the_offset<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let written = append_n(&mut log, 0, 150).await;
    log.sync().await.unwrap();
    let segments = log.segment_count();
    assert!(segments > 3);
    let cut = written[written.len() / 2].0;
    let deleted = log.delete_before(cut).await.unwrap();
    assert!(deleted > 0 && deleted < segments);
    let start = log.log_start_offset();
    // Nothing at or after the cut is gone, and the start is a segment boundary below it.
    assert!(start <= cut && start > 0);
    let kept: Vec<_> = written
        .iter()
        .filter(|(o, _)| *o >= start)
        .cloned()
        .collect();
    assert_eq!(read_all(&log).await, kept);
    // Past the end: everything but the active segment goes, never the active one.
    log.delete_before(u64::MAX).await.unwrap();
    assert_eq!(log.segment_count(), 1);
    let start = log.log_start_offset();
    drop(log);
    let log = Log::open(disk, small()).await.unwrap();
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(log.next_offset(), end_of(&written));
}

/// The batches of `written` holding an offset at or past `start` (a read from the start
/// returns the whole batch that holds it, as Kafka does).
fn from_start(written: &[(u64, Vec<u8>)], start: u64) -> Vec<(u64, Vec<u8>)> {
    written
        .iter()
        .filter(|(o, b)| o + BatchHeader::parse(b).unwrap().last_offset_delta as u64 >= start)
        .cloned()
        .collect()
}

async fn advance_start_hides_records_below_it_and_survives_reopen<D: Disk + Clone>(disk: D) {
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    let written = append_n(&mut log, 0, 150).await;
    log.sync().await.unwrap();
    let segments = log.segment_count();
    // Inside a batch of four records, in the middle of the log.
    let (base, _) = written
        .iter()
        .find(|(o, b)| *o > 100 && BatchHeader::parse(b).unwrap().record_count == 4)
        .unwrap()
        .clone();
    let cut = base + 2;
    assert_eq!(log.advance_start(cut).await.unwrap(), cut);
    assert_eq!(log.log_start_offset(), cut);
    assert!(
        log.segment_count() < segments,
        "whole segments below the start are deleted"
    );
    assert!(matches!(
        log.read(cut - 1, 100).await,
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(read_all(&log).await, from_start(&written, cut));
    // A timestamp older than everything finds the start, not a deleted record.
    let hit = log.offset_for_timestamp(0).await.unwrap().unwrap();
    assert_eq!(hit.offset, cut);
    // Backwards changes nothing; past the end is refused.
    assert_eq!(log.advance_start(5).await.unwrap(), cut);
    assert!(log.advance_start(log.next_offset() + 1).await.is_err());
    drop(log);
    let mut log = Log::open(disk.clone(), small()).await.unwrap();
    assert_eq!(log.log_start_offset(), cut, "the start survives a reopen");
    assert_eq!(read_all(&log).await, from_start(&written, cut));
    // Up to the end: the log is empty to readers, and appends go on from there.
    let end = log.next_offset();
    assert_eq!(log.advance_start(end).await.unwrap(), end);
    let more = append_n(&mut log, 150, 3).await;
    assert_eq!(more[0].0, end);
    log.sync().await.unwrap();
    assert_eq!(read_all(&log).await, more);
    // Truncating below the start (a replica dropping a divergent suffix) moves it down.
    log.truncate_to(end - 10).await.unwrap();
    assert_eq!(log.log_start_offset(), end - 10);
    assert_eq!(log.next_offset(), end - 10);
    drop(log);
    let log = Log::open(disk, small()).await.unwrap();
    assert_eq!(log.log_start_offset(), end - 10);
}

/// SimDisk-only: the start DeleteRecords set is durable once `advance_start` returns,
/// whatever a crash does to writes after it (deleted records never come back).
#[test]
fn advance_start_survives_crashes() {
    block_on(async {
        for seed in 0..40 {
            let disk = SimDisk::new(seed);
            let mut log = Log::open(disk.clone(), small()).await.unwrap();
            let written = append_n(&mut log, 0, 60).await;
            log.sync().await.unwrap();
            let mut start = 0;
            for step in 1..=(seed % 5 + 1) {
                start = written[(step * 9) as usize].0 + 1;
                log.advance_start(start).await.unwrap();
            }
            // An unsynced append and a checkpoint write in flight are what the crash tears.
            append_n(&mut log, 60, 2).await;
            disk.crash();
            let log = Log::open(disk, small()).await.unwrap();
            assert_eq!(log.log_start_offset(), start, "seed {seed}");
            let expect = from_start(&written, start);
            // The two unsynced batches may or may not have survived.
            let got = read_all(&log).await;
            assert_eq!(got[..expect.len()], expect[..], "seed {seed}");
        }
    })
}
