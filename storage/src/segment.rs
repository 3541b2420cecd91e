//! One segment: a `.log` file of whole batches starting at `base`, and its `.index`.
//!
//! Recovery and append share [`Segment::track`], so the index that recovery rebuilds is
//! exactly the one appends would have written.

use std::io;

use crate::append_file::AppendFile;
use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::error::StorageError;
use crate::index::{self, ENTRY_LEN, IndexEntry, NO_TIMESTAMP};
use crate::io::{Disk, DiskFile};

/// Recovery reads the log in chunks of this size.
const SCAN_CHUNK: usize = 1 << 20;

/// Written bytes of the active segment kept in memory for consumers at the head (up to
/// one written buffer more per partition): a few milliseconds of a partition at disk
/// speed, and four of the largest batches, so a consumer that keeps up never waits for a
/// device read, even with 1 MiB batches. Memory: this much per partition written to.
pub(crate) const ACTIVE_READ_CACHE: u64 = 1 << 20;

pub(crate) fn log_name(base: u64) -> String {
    format!("{base:020}.log")
}

pub(crate) fn index_name(base: u64) -> String {
    format!("{base:020}.index")
}

/// Parses `00000000000000000042.log` into 42.
pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

pub(crate) struct Segment<F: DiskFile> {
    pub(crate) base: u64,
    pub(crate) log: AppendFile<F>,
    pub(crate) index: AppendFile<F>,
    pub(crate) entries: Vec<IndexEntry>,
    /// One past the last offset stored here.
    pub(crate) next_offset: u64,
    /// Largest record timestamp stored here, [`NO_TIMESTAMP`] when empty.
    pub(crate) max_timestamp: i64,
    /// When the segment got its first batch, for rolling by age.
    pub(crate) created_ms: Option<i64>,
    /// How many entries point at batches that were durable at the last sync: only these
    /// may reach the index file, or a crash could leave an entry past a hole.
    pub(crate) durable_entries: usize,
    bytes_since_entry: u64,
    index_interval_bytes: u64,
}

/// What a scan of batch headers found.
struct ScanEnd {
    position: u64,
    /// Why the scan stopped before the end of the file, if it did.
    stopped: Option<String>,
}

impl<F: DiskFile> Segment<F> {
    /// Creates an empty segment at `base` (files created, space preallocated, directory
    /// synced so that the segment survives a crash).
    pub(crate) async fn create<D: Disk<File = F>>(
        disk: &D,
        base: u64,
        index_interval_bytes: u64,
        preallocate: Option<u64>,
    ) -> io::Result<Self> {
        let log_file = disk.open(&log_name(base)).await?;
        let index_file = disk.open(&index_name(base)).await?;
        log_file.truncate(0).await?;
        index_file.truncate(0).await?;
        if let Some(bytes) = preallocate {
            log_file.preallocate(bytes).await?;
        }
        disk.sync_dir().await?;
        let mut log = AppendFile::open(log_file, 0).await?;
        // A new segment is the active one: its freshest bytes are what consumers read.
        log.set_keep(ACTIVE_READ_CACHE);
        Ok(Self {
            base,
            log,
            index: AppendFile::open(index_file, 0).await?,
            entries: Vec::new(),
            next_offset: base,
            max_timestamp: NO_TIMESTAMP,
            created_ms: None,
            durable_entries: 0,
            bytes_since_entry: 0,
            index_interval_bytes,
        })
    }

    /// Opens an existing segment: keeps the valid prefix of its index, scans the log from
    /// the last index entry whose batch verifies, and stops at the first batch that is
    /// torn, fails its CRC, or does not continue the offsets. When `is_active`, anything
    /// after that point is cut off durably; a sealed segment is only reported.
    pub(crate) async fn recover<D: Disk<File = F>>(
        disk: &D,
        base: u64,
        index_interval_bytes: u64,
        max_batch_bytes: usize,
        is_active: bool,
    ) -> Result<Self, StorageError> {
        let log_file = disk.open(&log_name(base)).await?;
        let index_file = disk.open(&index_name(base)).await?;
        let file_size = log_file.size().await?;
        let index_bytes = index_file
            .read_at(0, index_file.size().await? as usize)
            .await?;
        let (file_entries, index_clean) = index::decode_all(&index_bytes);

        let mut seg = Self {
            base,
            // Placeholders until the scan knows the logical end.
            log: AppendFile::open(log_file, 0).await?,
            index: AppendFile::open(index_file, 0).await?,
            entries: file_entries.clone(),
            next_offset: base,
            max_timestamp: NO_TIMESTAMP,
            created_ms: None,
            durable_entries: 0,
            bytes_since_entry: 0,
            index_interval_bytes,
        };
        seg.entries.retain(|e| u64::from(e.position) < file_size);
        // Start at the last entry and fall back while its first batch does not verify: an
        // index checkpoint may point past what a crash kept.
        let end = loop {
            let had_entry = !seg.entries.is_empty();
            let start = seg.reset_to_last_entry();
            let end = seg.scan(start, file_size, max_batch_bytes).await?;
            // No batch verified at the entry's position (the entry is already popped):
            // retry from the one before; the scan re-adds every entry it confirms.
            if end.position > start || !had_entry {
                break end;
            }
        };
        if let Some(why) = &end.stopped {
            if is_active {
                tracing::info!(segment = base, position = end.position, %why, "recovery cut the log tail");
            } else {
                tracing::warn!(segment = base, position = end.position, %why, "sealed segment ends early");
            }
        }
        // The first batch's timestamp stands in for the creation time after a restart.
        if seg.next_offset > base {
            let first = seg.log.file.read_at(0, HEADER_LEN).await?;
            seg.created_ms = BatchHeader::parse(&first).ok().map(|h| h.max_timestamp);
        }

        let log_file = seg.log.file;
        seg.log = AppendFile::open(log_file, end.position).await?;
        if is_active && (end.stopped.is_some() || file_size != crate::io::align_up(end.position)) {
            seg.log.truncate(end.position).await?;
        }

        // Rewrite the index only where it differs from what the scan confirmed.
        let same = file_entries
            .iter()
            .zip(&seg.entries)
            .take_while(|(a, b)| a == b)
            .count();
        let index_file = seg.index.file;
        seg.index = AppendFile::open(index_file, (same * ENTRY_LEN) as u64).await?;
        if same != file_entries.len() || !index_clean {
            seg.index.truncate((same * ENTRY_LEN) as u64).await?;
        }
        for e in &seg.entries[same..] {
            seg.index.append(&e.encode());
        }
        seg.durable_entries = seg.entries.len();
        if is_active {
            seg.index.flush().await?;
        } else {
            seg.index.sync().await?;
        }
        Ok(seg)
    }

    /// Drops nothing but resets the scan state to start at the last entry; returns its
    /// position. The entry itself is popped so that the scan re-adds it once verified.
    fn reset_to_last_entry(&mut self) -> u64 {
        match self.entries.pop() {
            Some(e) => {
                self.next_offset = self.base + u64::from(e.relative_offset);
                self.max_timestamp = e.max_timestamp_before;
                self.bytes_since_entry = self.index_interval_bytes; // force the entry back
                u64::from(e.position)
            }
            None => {
                self.next_offset = self.base;
                self.max_timestamp = NO_TIMESTAMP;
                self.bytes_since_entry = 0;
                0
            }
        }
    }

    /// Scans batches from `position` up to `limit` bytes of file, tracking each valid one.
    ///
    /// Before stopping anywhere but at clean zeros, it reads that place once more: a bit
    /// flipped in transit (bus, controller) must not cut a log whose stored bytes are fine.
    async fn scan(
        &mut self,
        mut position: u64,
        limit: u64,
        max_batch_bytes: usize,
    ) -> Result<ScanEnd, StorageError> {
        let mut chunk: Vec<u8> = Vec::new();
        let mut chunk_start = position;
        let mut reread_at = None;
        loop {
            if position + batch::LOG_OVERHEAD as u64 > limit {
                return Ok(ScanEnd {
                    position,
                    stopped: None,
                });
            }
            let at = (position - chunk_start) as usize;
            // Refill when the header or the whole batch is not in the chunk yet.
            let need = match chunk.get(at..).and_then(|b| BatchHeader::parse(b).ok()) {
                Some(h) => h.size,
                None => HEADER_LEN,
            };
            let verdict = if chunk.len() < at + need {
                let want = need.max(SCAN_CHUNK).min((limit - position) as usize);
                chunk = self.log.file.read_at(position, want).await?;
                chunk_start = position;
                if chunk.len() >= need {
                    continue;
                }
                if chunk.iter().all(|&b| b == 0) {
                    return Ok(ScanEnd {
                        position,
                        stopped: None,
                    });
                }
                Err("torn batch".to_string())
            } else {
                let bytes = &chunk[at..at + need];
                // Zeros are the padding after the last batch: the clean end of the log.
                if bytes[..batch::LOG_OVERHEAD].iter().all(|&b| b == 0) {
                    return Ok(ScanEnd {
                        position,
                        stopped: None,
                    });
                }
                match batch::validate(bytes, max_batch_bytes.max(need)) {
                    Ok(h) if h.base_offset == self.next_offset as i64 => Ok(h),
                    Ok(h) => Err(format!(
                        "batch at offset {} where {} was expected",
                        h.base_offset, self.next_offset
                    )),
                    Err(e) => Err(e.to_string()),
                }
            };
            match verdict {
                Ok(header) => {
                    self.track(position, &header);
                    position += header.size as u64;
                }
                Err(_) if reread_at != Some(position) => {
                    reread_at = Some(position);
                    chunk.clear();
                    chunk_start = position;
                }
                Err(why) => {
                    return Ok(ScanEnd {
                        position,
                        stopped: Some(why),
                    });
                }
            }
        }
    }

    /// Records a batch (already at its offset) stored at `position`: index entry when due,
    /// next offset, max timestamp. The only place index entries are made.
    pub(crate) fn track(&mut self, position: u64, header: &BatchHeader) {
        debug_assert_eq!(header.base_offset as u64, self.next_offset);
        if self.entries.is_empty() || self.bytes_since_entry >= self.index_interval_bytes {
            self.entries.push(IndexEntry {
                relative_offset: (self.next_offset - self.base) as u32,
                position: position as u32,
                max_timestamp_before: self.max_timestamp,
            });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += header.size as u64;
        self.next_offset = header.last_offset() as u64 + 1;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
    }

    /// Appends to the index stream the entries not yet in it, up to the first `upto`.
    pub(crate) fn stage_index(&mut self, upto: usize) {
        let staged = (self.index.len() as usize) / ENTRY_LEN;
        for e in &self.entries[staged..upto.max(staged)] {
            self.index.append(&e.encode());
        }
    }

    fn corrupt_at(&self, position: u64, reason: String) -> StorageError {
        StorageError::Corrupt {
            segment: self.base,
            position,
            reason,
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.log.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.next_offset == self.base
    }

    /// Cuts the segment so that it ends before the batch holding `offset` (a batch is
    /// never split). Durable on return.
    pub(crate) async fn truncate_to(&mut self, offset: u64) -> Result<(), StorageError> {
        // Rescan from the last entry below `offset` and stop at the batch holding it.
        let rel = offset.saturating_sub(self.base).min(u64::from(u32::MAX)) as u32;
        let keep = self.entries.partition_point(|e| e.relative_offset <= rel);
        self.entries.truncate(keep);
        let start = self.reset_to_last_entry();
        let mut position = start;
        let end = self.log.len();
        while position < end {
            // Every batch walked over is checked whole: a cut placed by a damaged length
            // field would leave half a batch behind.
            let head = self.log.read(position, HEADER_LEN).await?;
            let size = BatchHeader::parse(&head)
                .map_err(|e| self.corrupt_at(position, e.to_string()))?
                .size;
            let bytes = self.log.read(position, size).await?;
            let header = batch::validate(&bytes, size)
                .map_err(|e| self.corrupt_at(position, e.to_string()))?;
            if header.base_offset != self.next_offset as i64 {
                return Err(self.corrupt_at(
                    position,
                    format!(
                        "batch at offset {} where {} was expected",
                        header.base_offset, self.next_offset
                    ),
                ));
            }
            if header.last_offset() as u64 >= offset {
                break;
            }
            self.track(position, &header);
            position += header.size as u64;
        }
        self.log.truncate(position).await?;
        let kept = self.entries.len();
        let index_len = (self.index.len() as usize / ENTRY_LEN).min(kept);
        self.index.truncate((index_len * ENTRY_LEN) as u64).await?;
        self.stage_index(self.entries.len());
        self.durable_entries = self.entries.len();
        self.index.sync().await?;
        Ok(())
    }
}
