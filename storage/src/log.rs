//! The partition log: an ordered run of segments, the last one active.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::batch::{self, BatchHeader};
use crate::error::StorageError;
use crate::index;
use crate::io::{BLOCK, Disk, DiskFile};
use crate::segment::{self, Segment};
use crate::start_checkpoint;

/// Per-log settings; the defaults are Kafka's.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment before one grows past this (Kafka `segment.bytes`, 1 GiB).
    pub segment_bytes: u64,
    /// Roll a segment this old, measured from its first batch (`segment.ms`, 7 days).
    pub segment_ms: Option<i64>,
    /// Delete the oldest segments while the log exceeds this (`retention.bytes`, none).
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this (`retention.ms`, 7 days).
    pub retention_ms: Option<i64>,
    /// Largest batch accepted (`message.max.bytes`, 1 MiB + the 12-byte log overhead).
    pub max_batch_bytes: usize,
    /// One index entry per this many bytes of log (`index.interval.bytes`).
    pub index_interval_bytes: u64,
    /// Index bytes that pile up in the active segment before a sync also writes them
    /// out (the checkpoint recovery starts scanning from). Larger means fewer extra writes
    /// beside syncs, and a longer scan at recovery (64 KiB: ~13 MiB of log).
    pub index_checkpoint_bytes: u64,
    /// Appended bytes held in memory before whole blocks are written ahead of a sync.
    pub write_behind_bytes: u64,
    /// Reserve each new segment's space up front so appends never allocate extents.
    pub preallocate: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            max_batch_bytes: 1_048_588,
            index_interval_bytes: 4096,
            index_checkpoint_bytes: 16 * BLOCK as u64,
            write_behind_bytes: 8 << 20,
            preallocate: true,
        }
    }
}

impl LogConfig {
    fn check(&self) -> Result<(), StorageError> {
        // Index positions are u32, like Kafka's, and a batch must fit in a segment.
        if self.segment_bytes > u64::from(u32::MAX) || self.segment_bytes < BLOCK as u64 {
            return Err(StorageError::Config(format!(
                "segment_bytes {} must be between {BLOCK} and {}",
                self.segment_bytes,
                u32::MAX
            )));
        }
        if self.max_batch_bytes < batch::HEADER_LEN || self.index_interval_bytes == 0 {
            return Err(StorageError::Config(
                "max_batch_bytes must hold a header and index_interval_bytes be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
}

/// Whole batches read from the log, bytes exactly as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatches {
    pub bytes: Bytes,
    /// The offset after the last batch returned (where the next read starts).
    pub next_offset: u64,
}

/// The answer to a ListOffsets-by-time question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampHit {
    pub offset: u64,
    pub timestamp: i64,
}

/// A batch on its way into the log: borrowed (copied on append) or shared (held as it is
/// until written).
enum Incoming<'a> {
    Copied(&'a [u8]),
    Shared(Bytes),
}

/// Logs opened in this process: the high half of each one's first generation.
static LOGS_OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An fdatasync of a log in flight, started by [`Log::write_pending`]: everything appended
/// before it was written to the file, and this makes it durable. It borrows nothing of the
/// log, so its owner awaits [`SyncPoint::wait`] while it goes on appending (the next
/// round's writes overlap this one's sync), then hands it to [`Log::complete_sync`].
pub struct SyncPoint<F> {
    file: Rc<F>,
    /// The log end the sync covers.
    end: u64,
    /// The active segment it covers, and how many of its index entries.
    segment: u64,
    entries: usize,
    /// The log's truncation generation when it started: a truncation or restart since
    /// may have replaced what it covers, so it then proves nothing.
    generation: u64,
}

impl<F: DiskFile> SyncPoint<F> {
    /// The fdatasync itself.
    pub async fn wait(&self) -> std::io::Result<()> {
        self.file.sync().await
    }

    /// The log end this sync makes durable.
    pub fn end(&self) -> u64 {
        self.end
    }
}

/// A partition log on a [`Disk`]. Lives on one shard; `&mut self` serialises writers.
pub struct Log<D: Disk> {
    disk: D,
    config: LogConfig,
    /// Oldest first; the last is the active segment. Never empty.
    segments: VecDeque<Segment<D::File>>,
    durable_offset: u64,
    /// The end the newest sync started covers (>= `durable_offset`): nothing new to sync
    /// while the log ends there.
    issued_offset: u64,
    /// Moves at every truncation and restart: a [`SyncPoint`] of another generation (or of
    /// another log) proves nothing about what this log holds now.
    generation: u64,
    /// The start DeleteRecords set, which may lie inside the first segment (0: none), and
    /// the sequence of its last checkpoint write.
    start: u64,
    start_seq: u64,
}

impl<D: Disk> Log<D> {
    /// Opens the log in `disk`, creating it empty if there is none, and recovers it: every
    /// synced batch is kept, a torn or corrupt tail is cut, missing or damaged indexes are
    /// rebuilt.
    pub async fn open(disk: D, config: LogConfig) -> Result<Self, StorageError> {
        config.check()?;
        let names = disk.list().await?;
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|n| segment::parse_log_name(n))
            .collect();
        bases.sort_unstable();
        // An index without its log is left over from a deletion a crash interrupted.
        for name in &names {
            if let Some(stem) = name.strip_suffix(".index") {
                if !names.contains(&format!("{stem}.log")) {
                    disk.remove(name).await?;
                }
            }
        }
        let mut segments = VecDeque::with_capacity(bases.len().max(1));
        for (i, &base) in bases.iter().enumerate() {
            let is_active = i + 1 == bases.len();
            let seg = Segment::recover(
                &disk,
                base,
                config.index_interval_bytes,
                config.max_batch_bytes,
                is_active,
            )
            .await?;
            if let Some(prev) = segments.back() {
                let prev: &Segment<D::File> = prev;
                if prev.next_offset != base {
                    tracing::warn!(
                        segment = prev.base,
                        ends_at = prev.next_offset,
                        next_segment = base,
                        "gap between segments: offsets in it read as corrupt"
                    );
                }
            }
            segments.push_back(seg);
        }
        if segments.is_empty() {
            segments.push_back(
                Segment::create(&disk, 0, config.index_interval_bytes, prealloc(&config)).await?,
            );
        } else {
            // What recovery kept may sit only in the device cache: make it durable before
            // calling it so.
            let active = segments.back_mut().expect("non-empty");
            active.log.sync().await?;
            active.log.set_keep(segment::ACTIVE_READ_CACHE);
        }
        let durable_offset = segments.back().expect("non-empty").next_offset;
        let (start_seq, start) = start_checkpoint::load(&disk, &names)
            .await?
            .unwrap_or((0, 0));
        let mut log = Self {
            disk,
            config,
            segments,
            durable_offset,
            issued_offset: durable_offset,
            // Every log opened in this process starts apart, so that a point of another
            // (one closed and opened again) never matches.
            generation: LOGS_OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 32,
            start,
            start_seq,
        };
        // A start past the end (a crash inside a truncation below it) would hide every
        // record appended from here: it comes down to the end.
        if log.start > log.next_offset() {
            let end = log.next_offset();
            log.set_start(end).await?;
        }
        Ok(log)
    }

    /// The first offset a reader may ask for: the first stored one, or the later start
    /// [`Log::advance_start`] set.
    pub fn log_start_offset(&self) -> u64 {
        let physical = self.segments.front().expect("never empty").base;
        physical.max(self.start).min(self.next_offset())
    }

    /// The offset the next appended record gets (Kafka's log end offset).
    pub fn next_offset(&self) -> u64 {
        self.active().next_offset
    }

    /// Every offset below this is durable (synced).
    pub fn durable_offset(&self) -> u64 {
        self.durable_offset
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size()).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Changes the limits (retention, roll size and age, batch size) of an open log, as
    /// a topic config change does; they apply from the next append or retention pass.
    pub fn set_config(&mut self, config: LogConfig) -> Result<(), StorageError> {
        config.check()?;
        self.config = config;
        Ok(())
    }

    fn active(&self) -> &Segment<D::File> {
        self.segments.back().expect("never empty")
    }

    /// Validates `batch` (magic 2, length, CRC32C, record count, size limit), assigns its
    /// offsets by patching the base offset in place, and appends it. A refused batch
    /// never reaches the file. Not durable until [`Log::sync`].
    pub async fn append(
        &mut self,
        batch: &mut [u8],
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        let header = batch::validate(batch, self.config.max_batch_bytes)?;
        let base_offset = self.next_offset();
        batch::set_base_offset(batch, base_offset as i64);
        let header = BatchHeader {
            base_offset: base_offset as i64,
            ..header
        };
        self.append_validated(Incoming::Copied(batch), header, now_ms)
            .await
    }

    /// Appends a batch whose offsets were assigned elsewhere (by the replication leader):
    /// validated like [`Log::append`], and its base offset must be exactly
    /// [`Log::next_offset`]. The bytes are stored unchanged, and not copied until they are
    /// written to the device.
    pub async fn append_at(
        &mut self,
        batch: Bytes,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        let header = batch::validate(&batch, self.config.max_batch_bytes)?;
        self.append_assigned(batch, header, now_ms).await
    }

    /// [`Log::append_at`] for a batch whose CRC32C this process verified or computed itself
    /// (a leader's own proposals): every other check holds, the CRC is not computed again.
    pub async fn append_own(
        &mut self,
        batch: Bytes,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        let header = batch::validate_framing(&batch, self.config.max_batch_bytes)?;
        self.append_assigned(batch, header, now_ms).await
    }

    async fn append_assigned(
        &mut self,
        batch: Bytes,
        header: BatchHeader,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        if header.base_offset != self.next_offset() as i64 {
            return Err(StorageError::NotNextOffset {
                base_offset: header.base_offset,
                next_offset: self.next_offset(),
            });
        }
        self.append_validated(Incoming::Shared(batch), header, now_ms)
            .await
    }

    async fn append_validated(
        &mut self,
        batch: Incoming<'_>,
        header: BatchHeader,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        self.roll_if_needed(&header, now_ms).await?;
        let base_offset = header.base_offset as u64;
        let write_behind = self.config.write_behind_bytes;
        let active = self.segments.back_mut().expect("never empty");
        let position = active.log.len();
        active.track(position, &header);
        active.created_ms.get_or_insert(now_ms);
        match batch {
            Incoming::Copied(b) => active.log.append(b),
            Incoming::Shared(b) => active.log.append_shared(b),
        }
        if active.log.unwritten() >= write_behind {
            active.log.flush_full_blocks().await?;
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: header.last_offset() as u64,
            max_timestamp: header.max_timestamp,
        })
    }

    async fn roll_if_needed(
        &mut self,
        header: &BatchHeader,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let active = self.active();
        if active.is_empty() {
            return Ok(());
        }
        let full = active.size() + header.size as u64 > self.config.segment_bytes;
        let old = matches!((self.config.segment_ms, active.created_ms), (Some(ms), Some(created)) if now_ms - created >= ms);
        // Relative offsets in the index are u32.
        let offsets_full =
            active.next_offset + header.record_count as u64 - active.base > u64::from(u32::MAX);
        if full || old || offsets_full {
            self.roll().await?;
        }
        Ok(())
    }

    /// Seals the active segment (log and index synced) and starts a new one.
    async fn roll(&mut self) -> Result<(), StorageError> {
        let active = self.segments.back_mut().expect("never empty");
        active.log.sync().await?;
        // Sealed: its reads go to the file, its memory back to the new segment.
        active.log.set_keep(0);
        active.stage_index(active.entries.len());
        active.index.sync().await?;
        let base = active.next_offset;
        self.durable_offset = base;
        self.issued_offset = base;
        let seg = Segment::create(
            &self.disk,
            base,
            self.config.index_interval_bytes,
            prealloc(&self.config),
        )
        .await?;
        self.segments.push_back(seg);
        Ok(())
    }

    /// Makes every batch appended so far durable with one fdatasync, however many appends
    /// came before it (group commit), and returns the durable end offset.
    pub async fn sync(&mut self) -> Result<u64, StorageError> {
        // Even when a sync in flight covers the end (its owner may not wait for it).
        if let Some(point) = self.start_sync(true).await? {
            point.wait().await?;
            self.complete_sync(&point);
        }
        Ok(self.durable_offset)
    }

    /// Writes everything appended so far to the file and returns the fdatasync that will
    /// make it durable, without waiting for it: the caller awaits [`SyncPoint::wait`] while
    /// it appends and writes more, then calls [`Log::complete_sync`]. `None`: nothing
    /// appended since the last sync started.
    pub async fn write_pending(&mut self) -> Result<Option<SyncPoint<D::File>>, StorageError> {
        self.start_sync(false).await
    }

    /// Writes everything appended so far to the file, without a sync: the writes of a
    /// round that come while the previous round's sync is in flight.
    pub async fn write(&mut self) -> Result<(), StorageError> {
        let active = self.segments.back_mut().expect("never empty");
        active.log.flush().await?;
        Ok(())
    }

    /// `again`: a sync even if one already started covers the end.
    async fn start_sync(
        &mut self,
        again: bool,
    ) -> Result<Option<SyncPoint<D::File>>, StorageError> {
        let active = self.segments.back_mut().expect("never empty");
        let unwritten = active.log.unwritten() > 0;
        let covered = if again {
            self.durable_offset
        } else {
            self.issued_offset
        };
        if covered == active.next_offset && !unwritten {
            return Ok(None);
        }
        // Checkpoint the index once a block of entries has piled up, beside the log's own
        // write so it adds no latency. Only entries for batches durable at a completed
        // sync go out, and unsynced on purpose: recovery verifies an entry before it
        // starts scanning there.
        active.stage_index(active.durable_entries);
        let checkpoint = active.index.unwritten() >= self.config.index_checkpoint_bytes;
        let (log, index) = (&mut active.log, &mut active.index);
        let (written, flushed) = futures_lite::future::zip(log.flush(), async {
            if checkpoint {
                index.flush().await
            } else {
                Ok(())
            }
        })
        .await;
        written?;
        flushed?;
        self.issued_offset = active.next_offset;
        Ok(Some(SyncPoint {
            file: active.log.file.clone(),
            end: active.next_offset,
            segment: active.base,
            entries: active.entries.len(),
            generation: self.generation,
        }))
    }

    /// A [`SyncPoint`]'s fdatasync succeeded: what it covers is durable, unless a
    /// truncation or restart came between (then `None`: it proves nothing, and the next
    /// sync covers what the log holds). Returns the durable end.
    pub fn complete_sync(&mut self, point: &SyncPoint<D::File>) -> Option<u64> {
        if point.generation != self.generation {
            return None;
        }
        let active = self.segments.back_mut().expect("never empty");
        if point.segment == active.base {
            active.durable_entries = active.durable_entries.max(point.entries);
        }
        self.durable_offset = self.durable_offset.max(point.end);
        Some(self.durable_offset)
    }

    /// Reads whole batches starting with the one holding `from`, up to `max_bytes` (always
    /// at least one batch, as Kafka does, so a large batch cannot stall a consumer).
    pub async fn read(&self, from: u64, max_bytes: usize) -> Result<ReadBatches, StorageError> {
        self.read_up_to(from, max_bytes, self.next_offset()).await
    }

    /// Like [`Log::read`] but returns only batches that end below `end_offset` (the high
    /// watermark, for consumers).
    pub async fn read_up_to(
        &self,
        from: u64,
        max_bytes: usize,
        end_offset: u64,
    ) -> Result<ReadBatches, StorageError> {
        let (start, end) = (self.log_start_offset(), self.next_offset());
        if from < start || from > end {
            return Err(StorageError::OffsetOutOfRange {
                offset: from,
                start,
                end,
            });
        }
        let end_offset = end_offset.min(end);
        let empty = ReadBatches {
            bytes: Bytes::new(),
            next_offset: from,
        };
        if from >= end_offset {
            return Ok(empty);
        }
        let i = self.segments.partition_point(|s| s.base <= from) - 1;
        let seg = &self.segments[i];
        if from >= seg.next_offset {
            // Inside a gap left by a damaged sealed segment.
            return Err(StorageError::Corrupt {
                segment: seg.base,
                position: seg.size(),
                reason: format!("offset {from} lies in a gap of the log"),
            });
        }
        let rel = (from - seg.base) as u32;
        let entry = index::floor_by_offset(&seg.entries, rel);
        let mut position = entry.map_or(0, |e| u64::from(e.position));
        // The offset the batch at `position` must start at. Base offsets lie outside the
        // CRC, so they are checked against this chain instead.
        let mut expected = seg.base + entry.map_or(0, |e| u64::from(e.relative_offset));
        let seg_end = seg.size();
        // Bytes from here on come from memory that held them since they were appended
        // (and checked): their CRC cannot have rotted, so it is not computed again.
        let verified_from = seg.log.memory_from();
        // The answer is one range of the last chunk read (returned without a copy); a
        // chunk that ends mid-answer is read again from the answer's first batch.
        let mut chunk = Vec::new();
        let mut chunk_start = position;
        // Where the answer starts, and the base offset of its first batch.
        let mut first: Option<(u64, u64)> = None;
        let mut answer_end = position;
        let mut next_offset = from;
        while position < seg_end {
            let at = (position - chunk_start) as usize;
            let size = match chunk.get(at..).and_then(|b| BatchHeader::parse(b).ok()) {
                Some(h) => h.size,
                None => batch::HEADER_LEN,
            };
            if chunk.len() < at + size {
                let read_from = first.map_or(position, |(p, _)| p);
                let need = (position - read_from) as usize + size;
                let want = (size + max_bytes + self.config.index_interval_bytes as usize)
                    .min((seg_end - read_from) as usize);
                chunk = seg.log.read(read_from, want.max(need)).await?;
                chunk_start = read_from;
                if chunk.len() < need {
                    return Err(StorageError::Corrupt {
                        segment: seg.base,
                        position,
                        reason: "batch runs past the end of the segment".into(),
                    });
                }
                // The answer is served from this chunk: what was checked in the last one
                // is checked again here (a read can differ from the one before).
                if let Some((p, e)) = first.take() {
                    (position, expected, next_offset) = (p, e, from);
                }
                continue;
            }
            let bytes = &chunk[at..at + size];
            let header = BatchHeader::parse(bytes).map_err(|e| corrupt(seg.base, position, e))?;
            // The CRC covers neither the base offset nor the magic byte: check both here.
            if header.base_offset != expected as i64 || header.magic != 2 {
                return Err(corrupt(
                    seg.base,
                    position,
                    format!(
                        "batch header says offset {} magic {}, expected offset {expected} magic 2",
                        header.base_offset, header.magic
                    ),
                ));
            }
            let last = header.last_offset() as u64;
            expected = last + 1;
            if last >= from {
                if first.is_some_and(|(p, _)| (answer_end - p) as usize + size > max_bytes) {
                    break;
                }
                // Nothing failing its CRC is ever served, and nothing is decided on fields
                // the CRC has not vouched for (lastOffsetDelta).
                if position < verified_from && !batch::crc_ok(bytes) {
                    return Err(corrupt(
                        seg.base,
                        position,
                        "CRC32C mismatch in stored batch",
                    ));
                }
                if last >= end_offset {
                    break;
                }
                first.get_or_insert((position, header.base_offset as u64));
                answer_end = position + size as u64;
                next_offset = last + 1;
            }
            position += size as u64;
        }
        let Some((first, _)) = first else {
            return Ok(empty);
        };
        let from_at = (first - chunk_start) as usize;
        let to_at = (answer_end - chunk_start) as usize;
        Ok(ReadBatches {
            bytes: Bytes::from(chunk).slice(from_at..to_at),
            next_offset,
        })
    }

    /// The first record with a timestamp at or after `timestamp`, for ListOffsets; `None`
    /// if every record is older. Exact for uncompressed batches; for a compressed batch,
    /// whose records storage does not decompress, the batch's base offset and its max
    /// timestamp.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<TimestampHit>, StorageError> {
        // Records below a start DeleteRecords set are gone to readers, found or not.
        let start = self.log_start_offset();
        for seg in self
            .segments
            .iter()
            .filter(|s| s.next_offset > start && s.max_timestamp >= timestamp)
        {
            let mut position = index::floor_by_timestamp(&seg.entries, timestamp)
                .map_or(0, |e| u64::from(e.position));
            while position < seg.size() {
                let head = seg.log.read(position, batch::HEADER_LEN).await?;
                let header =
                    BatchHeader::parse(&head).map_err(|e| corrupt(seg.base, position, e))?;
                if header.max_timestamp >= timestamp && header.last_offset() as u64 >= start {
                    let bytes = seg.log.read(position, header.size).await?;
                    if !batch::crc_ok(&bytes) {
                        return Err(corrupt(
                            seg.base,
                            position,
                            "CRC32C mismatch in stored batch",
                        ));
                    }
                    let base = header.base_offset as u64;
                    // Per record when storage can read them (uncompressed, CreateTime);
                    // otherwise the batch's max timestamp stands for all of its records.
                    let records = batch::record_timestamps(&bytes)
                        .filter(|ts| ts.iter().any(|&(_, t)| t >= timestamp));
                    let Some(ts) = records else {
                        return Ok(Some(TimestampHit {
                            offset: base.max(start),
                            timestamp: header.max_timestamp,
                        }));
                    };
                    // None: only records below the start match; look further on.
                    if let Some((delta, t)) = ts
                        .into_iter()
                        .find(|&(d, t)| t >= timestamp && base + d as u64 >= start)
                    {
                        return Ok(Some(TimestampHit {
                            offset: base + delta as u64,
                            timestamp: t,
                        }));
                    }
                }
                position += header.size as u64;
            }
        }
        Ok(None)
    }

    /// Removes every batch from the one holding `offset` on (a batch is never split), so
    /// `next_offset()` becomes at most `offset`. Durable on return. Replication uses it to
    /// drop a divergent suffix; below the log start it empties the log and restarts it at
    /// `offset`.
    pub async fn truncate_to(&mut self, offset: u64) -> Result<(), StorageError> {
        if offset >= self.next_offset() {
            return Ok(());
        }
        // First, so that even a truncation that fails part way voids the syncs in flight.
        self.generation += 1;
        if offset <= self.log_start_offset() {
            // Kafka's truncateFullyAndStartAt: nothing below the start may come back.
            while let Some(seg) = self.segments.pop_back() {
                self.remove_segment_files(seg).await?;
            }
            let seg = Segment::create(
                &self.disk,
                offset,
                self.config.index_interval_bytes,
                prealloc(&self.config),
            )
            .await?;
            self.segments.push_back(seg);
            // Only now, with the records gone: new ones will take their offsets, and a
            // start above them would hide those. (A crash before this leaves a start past
            // the end, which `open` lowers.)
            if self.start > offset {
                self.set_start(offset).await?;
            }
        } else {
            while self.active().base >= offset {
                let seg = self.segments.pop_back().expect("never empty");
                self.remove_segment_files(seg).await?;
            }
            let active = self.segments.back_mut().expect("never empty");
            active.truncate_to(offset).await?;
            // It may have been sealed: active again, it serves the head's readers.
            active.log.set_keep(segment::ACTIVE_READ_CACHE);
            self.disk.sync_dir().await?;
        }
        self.durable_offset = self.durable_offset.min(self.next_offset());
        self.issued_offset = self.durable_offset;
        Ok(())
    }

    /// Drops every batch and starts the log again, empty, at `offset` (which may lie past
    /// the end): a replica whose leader holds nothing it could continue from (Kafka's
    /// truncateFullyAndStartAt). Durable on return.
    pub async fn restart_at(&mut self, offset: u64) -> Result<(), StorageError> {
        self.generation += 1;
        // Newest first: a crash part way leaves a shorter log, never a gap.
        while let Some(seg) = self.segments.pop_back() {
            self.remove_segment_files(seg).await?;
        }
        let create = |prealloc| {
            Segment::create(
                &self.disk,
                offset,
                self.config.index_interval_bytes,
                prealloc,
            )
        };
        // On a full disk the preallocation fails first; an empty file may still fit (and
        // the log must never be left without a segment).
        let seg = match create(prealloc(&self.config)).await {
            Ok(seg) => seg,
            Err(_) => create(None).await?,
        };
        self.segments.push_back(seg);
        if self.start > offset {
            self.set_start(offset).await?;
        }
        self.disk.sync_dir().await?;
        self.durable_offset = offset;
        self.issued_offset = offset;
        Ok(())
    }

    /// Deletes whole segments, oldest first, past the retention limits (never the active
    /// one), and moves the log start. Returns how many were deleted.
    pub async fn enforce_retention(&mut self, now_ms: i64) -> Result<usize, StorageError> {
        self.enforce_retention_below(now_ms, u64::MAX).await
    }

    /// [`Log::enforce_retention`], deleting only segments that end at or below `limit`
    /// (a replica deletes only what is committed).
    pub async fn enforce_retention_below(
        &mut self,
        now_ms: i64,
        limit: u64,
    ) -> Result<usize, StorageError> {
        let mut deleted = 0;
        let mut total = self.size_bytes();
        while self.segments.len() > 1 && self.segments[1].base <= limit {
            let oldest = self.segments.front().expect("len > 1");
            // Rolled since DeleteRecords moved the start past all of it.
            let below_start = self.segments[1].base <= self.start;
            let by_age = self
                .config
                .retention_ms
                .is_some_and(|ms| oldest.max_timestamp < now_ms.saturating_sub(ms));
            let by_size = self
                .config
                .retention_bytes
                .is_some_and(|limit| total - oldest.size() >= limit);
            if !(below_start || by_age || by_size) {
                break;
            }
            let seg = self.segments.pop_front().expect("len > 1");
            total -= seg.size();
            self.remove_segment_files(seg).await?;
            deleted += 1;
        }
        if deleted > 0 {
            self.disk.sync_dir().await?;
        }
        Ok(deleted)
    }

    /// Moves the log start up to `offset` (DeleteRecords): offsets below it are no longer
    /// served, whole segments below it are deleted, and the start survives a crash the
    /// moment this returns. `offset` must not pass [`Log::durable_offset`]; a start at or
    /// below the current one changes nothing. Returns the log start.
    pub async fn advance_start(&mut self, offset: u64) -> Result<u64, StorageError> {
        // Only up to what is durable: a start past records a crash could lose would lie
        // past the end after it.
        if offset > self.durable_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start: self.log_start_offset(),
                end: self.durable_offset,
            });
        }
        if offset > self.log_start_offset() {
            self.set_start(offset).await?;
            self.delete_before(offset).await?;
        }
        Ok(self.log_start_offset())
    }

    async fn set_start(&mut self, offset: u64) -> Result<(), StorageError> {
        start_checkpoint::store(&self.disk, self.start_seq + 1, offset).await?;
        self.start_seq += 1;
        self.start = offset;
        Ok(())
    }

    /// Deletes whole segments that end at or below `offset`, oldest first (never the
    /// active one), and moves the log start: a prefix the caller no longer needs, as when
    /// a newer snapshot supersedes it (compaction of the consumer-offsets log). Returns
    /// how many were deleted.
    pub async fn delete_before(&mut self, offset: u64) -> Result<usize, StorageError> {
        let mut deleted = 0;
        while self.segments.len() > 1 && self.segments[1].base <= offset {
            let seg = self.segments.pop_front().expect("len > 1");
            self.remove_segment_files(seg).await?;
            deleted += 1;
        }
        if deleted > 0 {
            self.disk.sync_dir().await?;
        }
        Ok(deleted)
    }

    async fn remove_segment_files(&self, seg: Segment<D::File>) -> Result<(), StorageError> {
        let base = seg.base;
        seg.log.close().await?;
        seg.index.close().await?;
        // The log goes first: an index without its log is cleaned up on open, a log
        // without its index is rebuilt.
        self.disk.remove(&segment::log_name(base)).await?;
        self.disk.remove(&segment::index_name(base)).await?;
        Ok(())
    }

    /// Closes the files without writing anything: for a log whose in-memory state is no
    /// longer trusted (a write failed) and that is being opened afresh from the disk.
    pub async fn abandon(self) -> Result<(), StorageError> {
        for seg in self.segments {
            seg.log.close().await?;
            seg.index.close().await?;
        }
        Ok(())
    }

    /// Syncs everything, writes the active index, and closes the files.
    pub async fn close(mut self) -> Result<(), StorageError> {
        self.sync().await?;
        let active = self.segments.back_mut().expect("never empty");
        active.stage_index(active.entries.len());
        active.index.sync().await?;
        for seg in self.segments {
            seg.log.close().await?;
            seg.index.close().await?;
        }
        Ok(())
    }
}

fn prealloc(config: &LogConfig) -> Option<u64> {
    config.preallocate.then_some(config.segment_bytes)
}

fn corrupt(segment: u64, position: u64, reason: impl ToString) -> StorageError {
    StorageError::Corrupt {
        segment,
        position,
        reason: reason.to_string(),
    }
}
