//! The replica driver: the one code that carries out what a node's replication groups ask
//! for, run by the broker (glommio, O_DIRECT files) and by the simulator (madsim, SimDisk)
//! alike. Bugs live in drivers (the order of hard state, epochs, appends and fsync;
//! recovery; catch-up reads), so the simulator must test this code, never a copy of it.
//!
//! Each group keeps its durable state in its own [`Disk`]: the log, and two small files of
//! two slots each (the hard state, and the epoch checkpoint, Kafka's
//! `leader-epoch-checkpoint`), written alternately with a sequence number and a CRC32C so
//! that a torn write leaves the previous value. [`drive`] turns a [`Node`]'s ready work into
//! I/O in the order the protocol needs:
//!
//! 1. every group's term and vote, durable, before any message leaves;
//! 2. the messages, handed to the transport (a leader's appends go out while its own disk
//!    writes, as Raft allows);
//! 3. per group, truncations and appends in order, the epoch checkpoint before the first
//!    append that needs it (or after the ops), the appended bytes written, and one
//!    fdatasync started ([`Syncing`]) unless one is in flight already;
//! 4. catch-up reads for followers, answered with `on_read`.
//!
//! The fdatasync is not awaited inside [`drive`]: its caller awaits it while it takes in
//! the next messages and proposals and drives again (whose appends are written while the
//! sync runs), and hands the outcome to [`synced`], which calls `on_persisted` with what
//! the sync proved durable and starts the next sync if more was written meanwhile. A
//! truncation or restart between a sync's start and its end voids it (the log's
//! generation): it proves nothing about entries that replaced what it covered. Callers
//! with nothing to overlap run [`drive_synced`].
//!
//! No runtime, no clock and no files but through `Disk`: the clock, the network and the
//! simulator's observation come in through [`Io`].

use std::collections::BTreeMap;

use bytes::Bytes;

use corelog_storage::batch::BatchHeader;
use corelog_storage::{Disk, DiskFile, Log, LogConfig, ReadBatches, StorageError, SyncPoint};

use crate::epochs::EpochCache;
use crate::node::{Envelope, GroupId, Node, NodeReady};
use crate::producers::ProducerTable;
use crate::raft::{HardState, LogState, StorageOp};
use crate::{NodeId, Offset, Term};

/// The hard-state file of a group (term and vote, two slots).
pub const HARD_STATE_FILE: &str = "raft-hard-state";
/// The epoch checkpoint of a group (its term history, two slots).
pub const EPOCHS_FILE: &str = "raft-epochs";

const SLOT: u64 = 4096;
const HARD_LEN: usize = 28;
/// One epoch-checkpoint slot: room for 5,000 term changes.
const EPOCH_SLOT: u64 = 64 * 1024;

/// What the driver needs besides the disk: the clock, the transport and, for the
/// simulator, observation. Hooks with a body do nothing unless a driver needs them.
#[allow(async_fn_in_trait)]
pub trait Io {
    /// Milliseconds on the node's monotonic clock.
    fn now_ms(&self) -> u64;
    /// Hands one envelope to the transport. Must not wait on a slow peer: the transport
    /// queues (bounded) or drops, and Raft retries.
    async fn send(&mut self, to: NodeId, env: Envelope);
    /// The wall clock for the index's timestamps of appended batches (milliseconds).
    fn wall_ms(&self) -> i64 {
        self.now_ms() as i64
    }
    /// A batch was appended to `group`'s log (the simulator mirrors logs for its checker).
    fn appended(&mut self, _group: GroupId, _batch: &[u8], _term: Term) {}
    /// `group`'s log was truncated to `offset`.
    fn truncated(&mut self, _group: GroupId, _offset: Offset) {}
    /// `group`'s log start moved up to `start`.
    fn start_moved(&mut self, _group: GroupId, _start: Offset) {}
    /// `group`'s log was emptied and starts again at `offset`.
    fn restarted(&mut self, _group: GroupId, _offset: Offset) {}
    /// Something worth a line in the log or the simulator's trace.
    fn event(&mut self, _what: String) {}
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("{what}: {source}")]
    Storage {
        what: &'static str,
        #[source]
        source: StorageError,
    },
}

impl DriveError {
    pub fn storage(&self) -> &StorageError {
        match self {
            Self::Storage { source, .. } => source,
        }
    }
}

fn err(what: &'static str) -> impl FnOnce(StorageError) -> DriveError {
    move |source| DriveError::Storage { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> DriveError {
    move |e| DriveError::Storage {
        what,
        source: StorageError::Io(e),
    }
}

/// One group's durable side on its disk, and the Kafka state derived from its log.
pub struct Replica<D: Disk> {
    pub log: Log<D>,
    /// Idempotent producers of the batches in `log`: kept by every append and truncation
    /// this driver makes and rebuilt at open, so every replica (a follower too) knows them.
    pub producers: ProducerTable,
    hard_file: D::File,
    hard_seq: u64,
    epochs_file: D::File,
    epoch_seq: u64,
    /// A sync of the log is in flight (its [`Syncing`] is the caller's).
    syncing: bool,
    /// Written since the sync in flight started: another is due when it ends.
    dirty: bool,
}

/// A log sync [`drive`] started for `group`: the caller awaits [`SyncPoint::wait`] (the
/// fdatasync) while other work goes on, then hands its outcome to [`synced`].
pub struct Syncing<F> {
    pub group: GroupId,
    pub point: SyncPoint<F>,
}

/// What [`Replica::open`] found.
pub struct Recovered {
    pub hard: HardState,
    /// The log's start and end, and the term history truncated to the log.
    pub log: LogState,
    /// The log holds data it cannot vouch for: the caller tells the group
    /// (`Raft::on_storage_corrupt`), so it neither leads nor serves it.
    pub damaged: Option<Damage>,
}

/// Why [`Recovered::damaged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A read failed as corrupt twice: rot on disk.
    Corrupt(String),
    /// A batch's stored epoch (outside the CRC) disagrees with the checkpoint, twice: rot
    /// in that field, or a broken checkpoint protocol (the simulator tells them apart by
    /// the faults it injected).
    EpochMismatch(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt(m) => write!(f, "corrupt on disk: {m}"),
            Self::EpochMismatch(m) => write!(f, "epoch mismatch: {m}"),
        }
    }
}

/// A failed read, and whether the data is corrupt on disk.
pub struct ReadFailure {
    pub error: StorageError,
    pub corrupt_on_disk: bool,
}

/// Reads batches, once more on a `Corrupt` answer: a bit flipped in transit reads right
/// the second time, rot on disk does not.
pub async fn read_checked<D: Disk>(
    log: &Log<D>,
    from: Offset,
    max_bytes: usize,
    end: Offset,
) -> Result<ReadBatches, ReadFailure> {
    match log.read_up_to(from, max_bytes, end).await {
        Err(StorageError::Corrupt { .. }) => {
            log.read_up_to(from, max_bytes, end)
                .await
                .map_err(|e| ReadFailure {
                    corrupt_on_disk: matches!(e, StorageError::Corrupt { .. }),
                    error: e,
                })
        }
        other => other.map_err(|e| ReadFailure {
            corrupt_on_disk: false,
            error: e,
        }),
    }
}

/// Reads `len` bytes at `at` until two reads agree: a bit flipped in transit must not make
/// a valid slot look torn (the older slot would bring back an older vote).
async fn read_stable<F: DiskFile>(f: &F, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    loop {
        let a = f.read_at(at, len).await?;
        if a == f.read_at(at, len).await? {
            return Ok(a);
        }
    }
}

/// Writes `bytes` into the slot sequence `seq` picks (of two, `slot_len` apart) and syncs
/// it: the other slot keeps the previous value through a torn write.
async fn write_slot<F: DiskFile>(
    f: &F,
    slot_len: u64,
    seq: u64,
    bytes: &[u8],
) -> std::io::Result<()> {
    f.write_at((seq % 2) * slot_len, bytes).await?;
    f.sync().await
}

fn encode_hard(hs: HardState, seq: u64) -> Vec<u8> {
    let mut block = vec![0u8; SLOT as usize];
    block[0..8].copy_from_slice(&seq.to_le_bytes());
    block[8..12].copy_from_slice(&hs.term.to_le_bytes());
    block[12..16].copy_from_slice(&hs.voted_for.unwrap_or(u32::MAX).to_le_bytes());
    let crc = crc32c::crc32c(&block[..24]);
    block[24..28].copy_from_slice(&crc.to_le_bytes());
    block
}

/// The valid slot with the higher sequence: (hard state, sequence); (default, 0) if none.
fn decode_hard(slots: [&[u8]; 2]) -> (HardState, u64) {
    let mut best = (HardState::default(), 0u64);
    for b in slots {
        if b.len() < HARD_LEN {
            continue;
        }
        let crc = u32::from_le_bytes(b[24..28].try_into().expect("4 bytes"));
        if crc32c::crc32c(&b[..24]) != crc || b[..24].iter().all(|&x| x == 0) {
            continue;
        }
        let seq = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
        let term = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        let voted = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        if seq >= best.1 {
            best = (
                HardState {
                    term,
                    voted_for: (voted != u32::MAX).then_some(voted),
                },
                seq,
            );
        }
    }
    best
}

/// `[seq u64][count u32][(term u32, offset u64) x count][crc32c u32]`, zero padded to a
/// block multiple.
fn encode_epochs(epochs: &EpochCache, seq: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + 12 * epochs.runs().len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&(epochs.runs().len() as u32).to_le_bytes());
    for &(term, offset) in epochs.runs() {
        body.extend_from_slice(&term.to_le_bytes());
        body.extend_from_slice(&offset.to_le_bytes());
    }
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    assert!(
        body.len() as u64 <= EPOCH_SLOT,
        "epoch checkpoint outgrew its slot"
    );
    body.resize(body.len().next_multiple_of(SLOT as usize), 0);
    body
}

fn decode_epochs(bytes: &[u8]) -> Option<(EpochCache, u64)> {
    if bytes.len() < 16 {
        return None;
    }
    let seq = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let end = 12usize.checked_add(count.checked_mul(12)?)?;
    if end + 4 > bytes.len() {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..end]) != crc {
        return None;
    }
    let runs = bytes[12..end]
        .chunks_exact(12)
        .map(|c| {
            (
                u32::from_le_bytes(c[0..4].try_into().expect("4 bytes")),
                u64::from_le_bytes(c[4..12].try_into().expect("8 bytes")),
            )
        })
        .collect();
    Some((EpochCache::from_runs(runs)?, seq))
}

impl<D: Disk> Replica<D> {
    /// Opens a group's state in `disk`: recovers the log, loads term, vote and the term
    /// history (truncated to the log), and walks every batch from the log start through
    /// `visit` with its term from the history (the broker rebuilds idempotent-producer
    /// state from it, the simulator its mirror for the checker). The producer table is
    /// rebuilt by the same walk. Reads that fail as
    /// corrupt on disk, or a stored epoch that disagrees with the history, stop the walk
    /// and are reported in `damaged`.
    pub async fn open(
        disk: D,
        config: LogConfig,
        mut visit: impl FnMut(&[u8], Term),
    ) -> Result<(Self, Recovered), DriveError> {
        let hard_file = disk
            .open(HARD_STATE_FILE)
            .await
            .map_err(io_err("hard state"))?;
        let epochs_file = disk.open(EPOCHS_FILE).await.map_err(io_err("epochs"))?;
        disk.sync_dir().await.map_err(io_err("state files"))?;
        let a = read_stable(&hard_file, 0, HARD_LEN)
            .await
            .map_err(io_err("read hard state"))?;
        let b = read_stable(&hard_file, SLOT, HARD_LEN)
            .await
            .map_err(io_err("read hard state"))?;
        let (hard, hard_seq) = decode_hard([&a, &b]);
        let mut best: Option<(EpochCache, u64)> = None;
        for slot in 0..2 {
            let bytes = read_stable(&epochs_file, slot * EPOCH_SLOT, EPOCH_SLOT as usize)
                .await
                .map_err(io_err("read epochs"))?;
            if let Some((cache, seq)) = decode_epochs(&bytes) {
                if best.as_ref().is_none_or(|(_, s)| seq > *s) {
                    best = Some((cache, seq));
                }
            }
        }
        let (mut epochs, epoch_seq) = best.unwrap_or_default();
        let log = Log::open(disk, config).await.map_err(err("open log"))?;
        epochs.truncate(log.next_offset());
        let mut producers = ProducerTable::default();
        let damaged = walk(&log, &epochs, &mut |b, term| {
            producers.on_batch(b);
            visit(b, term);
        })
        .await?;
        let state = LogState {
            start: log.log_start_offset(),
            end: log.next_offset(),
            epochs,
        };
        Ok((
            Self {
                log,
                producers,
                hard_file,
                hard_seq: hard_seq + 1,
                epochs_file,
                epoch_seq: epoch_seq + 1,
                syncing: false,
                dirty: false,
            },
            Recovered {
                hard,
                log: state,
                damaged,
            },
        ))
    }

    /// Writes a hard state and term history taken from elsewhere (a broker's earlier
    /// state file) before the first [`Replica::open`] of `disk`; durable on return. Does
    /// nothing if `disk` already holds a valid hard state (an import that ran before, and
    /// perhaps newer elections since).
    pub async fn import(disk: &D, hard: HardState, epochs: &EpochCache) -> Result<(), DriveError> {
        let h = disk
            .open(HARD_STATE_FILE)
            .await
            .map_err(io_err("hard state"))?;
        let e = disk.open(EPOCHS_FILE).await.map_err(io_err("epochs"))?;
        let r = async {
            let a = read_stable(&h, 0, HARD_LEN).await?;
            let b = read_stable(&h, SLOT, HARD_LEN).await?;
            if decode_hard([&a, &b]).1 > 0 {
                return Ok(());
            }
            write_slot(&h, SLOT, 1, &encode_hard(hard, 1)).await?;
            write_slot(&e, EPOCH_SLOT, 1, &encode_epochs(epochs, 1)).await?;
            disk.sync_dir().await
        }
        .await;
        h.close().await.map_err(io_err("hard state"))?;
        e.close().await.map_err(io_err("epochs"))?;
        r.map_err(io_err("import state"))
    }

    async fn save_hard_state(&mut self, hs: HardState) -> Result<(), DriveError> {
        let seq = self.hard_seq;
        write_slot(&self.hard_file, SLOT, seq, &encode_hard(hs, seq))
            .await
            .map_err(io_err("save hard state"))?;
        self.hard_seq += 1;
        Ok(())
    }

    async fn save_epochs(&mut self, epochs: &EpochCache) -> Result<(), DriveError> {
        let seq = self.epoch_seq;
        write_slot(
            &self.epochs_file,
            EPOCH_SLOT,
            seq,
            &encode_epochs(epochs, seq),
        )
        .await
        .map_err(io_err("save epochs"))?;
        self.epoch_seq += 1;
        Ok(())
    }

    /// Moves the log start up to `offset` (DeleteRecords), forgetting producers whose
    /// batches are all below it. Returns the new start.
    pub async fn advance_start(&mut self, offset: Offset) -> Result<Offset, StorageError> {
        let start = self.log.advance_start(offset).await?;
        self.producers.forget_below(start);
        Ok(start)
    }

    /// Deletes segments past retention that end at or below `limit` (see
    /// [`move_start`]), forgetting producers whose batches went with them. Returns the
    /// number of segments deleted.
    pub async fn enforce_retention_below(
        &mut self,
        now_ms: i64,
        limit: Offset,
    ) -> Result<usize, StorageError> {
        let n = self.log.enforce_retention_below(now_ms, limit).await?;
        if n > 0 {
            self.producers.forget_below(self.log.log_start_offset());
        }
        Ok(n)
    }

    /// Truncates the log to `offset` and the producer table with it; a truncation below
    /// what the table remembers rebuilds it from the log.
    async fn truncate(&mut self, offset: Offset, io: &mut impl Io) -> Result<(), DriveError> {
        self.log
            .truncate_to(offset)
            .await
            .map_err(err("truncate"))?;
        if !self.producers.truncate(offset) {
            let mut fresh = ProducerTable::default();
            if let Some(d) = walk_batches(&self.log, &mut |b| fresh.on_batch(b)).await? {
                // What could not be read cannot be deduplicated against; the rest is.
                io.event(format!("rebuilding producer state after truncation: {d}"));
            }
            self.producers = fresh;
        }
        Ok(())
    }

    /// Closes the state files; the log is the caller's to close or abandon.
    pub async fn into_log(self) -> Log<D> {
        let _ = self.hard_file.close().await;
        let _ = self.epochs_file.close().await;
        self.log
    }
}

/// Walks the log from its start; see [`Replica::open`].
async fn walk<D: Disk>(
    log: &Log<D>,
    epochs: &EpochCache,
    visit: &mut impl FnMut(&[u8], Term),
) -> Result<Option<Damage>, DriveError> {
    let mut from = log.log_start_offset();
    let end = log.next_offset();
    let mut rechecked = None;
    while from < end {
        let got = match read_checked(log, from, 1 << 20, end).await {
            Ok(got) => got,
            Err(f) if f.corrupt_on_disk => return Ok(Some(Damage::Corrupt(f.error.to_string()))),
            Err(f) => return Err(err("recovery read")(f.error)),
        };
        if got.bytes.is_empty() || got.next_offset <= from {
            break;
        }
        let mut rest = &got.bytes[..];
        let mut mismatch = None;
        let mut seen = Vec::new();
        while let Ok(h) = BatchHeader::parse(rest) {
            let base = h.base_offset as Offset;
            let term = h.partition_leader_epoch as Term;
            if epochs.term_at(base) != term {
                mismatch = Some(format!(
                    "batch {base} has epoch {term}, the checkpoint says {}",
                    epochs.term_at(base)
                ));
                break;
            }
            seen.push((
                rest.as_ptr() as usize - got.bytes.as_ptr() as usize,
                h.size,
                term,
            ));
            rest = &rest[h.size..];
        }
        if let Some(m) = mismatch {
            // The epoch field lies outside the CRC: read once more before calling it rot.
            if rechecked != Some(from) {
                rechecked = Some(from);
                continue;
            }
            for (at, size, term) in seen {
                visit(&got.bytes[at..at + size], term);
            }
            return Ok(Some(Damage::EpochMismatch(m)));
        }
        for (at, size, term) in seen {
            visit(&got.bytes[at..at + size], term);
        }
        from = got.next_offset;
    }
    Ok(None)
}

/// Visits every batch from the log start; stops at a range that reads as corrupt on disk
/// and says where.
async fn walk_batches<D: Disk>(
    log: &Log<D>,
    visit: &mut impl FnMut(&[u8]),
) -> Result<Option<String>, DriveError> {
    let mut from = log.log_start_offset();
    let end = log.next_offset();
    while from < end {
        let got = match read_checked(log, from, 1 << 20, end).await {
            Ok(got) => got,
            Err(f) if f.corrupt_on_disk => return Ok(Some(f.error.to_string())),
            Err(f) => return Err(err("producer state read")(f.error)),
        };
        if got.bytes.is_empty() || got.next_offset <= from {
            break;
        }
        let mut rest = &got.bytes[..];
        while let Ok(h) = BatchHeader::parse(rest) {
            if h.size > rest.len() {
                break;
            }
            visit(&rest[..h.size]);
            rest = &rest[h.size..];
        }
        from = got.next_offset;
    }
    Ok(None)
}

/// What moves a replicated log's start on this replica's own account.
#[derive(Debug, Clone, Copy)]
pub enum StartMove {
    /// Delete segments past the log config's retention (at this wall-clock time).
    Retention { now_ms: i64 },
    /// DeleteRecords: the start goes up to this offset.
    To(Offset),
    /// A prefix a snapshot superseded (offsets compaction): whole segments that end at
    /// or below this offset go.
    SegmentsBelow(Offset),
}

/// Moves `group`'s log start on this replica, never past what the group has committed
/// and made durable here ([`crate::Raft::start_bound`]), and tells the group; followers
/// follow a leader's start through its Appends. Returns the new start.
pub async fn move_start<D: Disk>(
    node: &mut Node,
    replicas: &mut BTreeMap<GroupId, Replica<D>>,
    group: GroupId,
    how: StartMove,
) -> Result<Offset, DriveError> {
    let (Some(raft), Some(r)) = (node.group_mut(group), replicas.get_mut(&group)) else {
        return Ok(0);
    };
    let bound = raft.start_bound();
    match how {
        StartMove::Retention { now_ms } => {
            r.enforce_retention_below(now_ms, bound)
                .await
                .map_err(err("retention"))?;
        }
        StartMove::To(offset) => {
            r.advance_start(offset.min(bound))
                .await
                .map_err(err("advance log start"))?;
        }
        StartMove::SegmentsBelow(offset) => {
            r.log
                .delete_before(offset.min(bound))
                .await
                .map_err(err("delete segments"))?;
            r.producers.forget_below(r.log.log_start_offset());
        }
    }
    let start = r.log.log_start_offset();
    raft.on_start_moved(start);
    Ok(start)
}

/// Drops the appends of one step that a later truncation or restart of the same step
/// undoes (whole batches: a truncation falls on a batch boundary of the log).
fn elide_undone(ops: Vec<StorageOp>) -> Vec<StorageOp> {
    // The common step (a leader's appends, a follower's) has nothing to undo: as it came.
    if !ops
        .iter()
        .any(|o| matches!(o, StorageOp::Truncate(_) | StorageOp::Restart(_)))
    {
        return ops;
    }
    let base = |b: &bytes::Bytes| BatchHeader::parse(b).map_or(0, |h| h.base_offset as Offset);
    let mut out: Vec<StorageOp> = Vec::with_capacity(ops.len());
    for op in ops {
        match &op {
            StorageOp::Truncate(x) => {
                for prior in out.iter_mut() {
                    if let StorageOp::Append(batches) | StorageOp::AppendOwn(batches) = prior {
                        batches.retain(|b| base(b) < *x);
                    }
                }
            }
            StorageOp::Restart(_) => {
                out.retain(|o| matches!(o, StorageOp::Read { .. }));
            }
            _ => {}
        }
        out.retain(
            |o| !matches!(o, StorageOp::Append(b) | StorageOp::AppendOwn(b) if b.is_empty()),
        );
        out.push(op);
    }
    out
}

/// Carries out everything `node` has ready, until it has nothing more (at most 64 rounds,
/// so a driver's loop keeps turning): see the module docs for the order. A storage error
/// is returned at once; the caller fails the node (the simulator restarts it from its
/// disks, the broker takes the partition offline or waits out ENOSPC).
/// Returns the log syncs it started (at most one per group): the caller awaits each and
/// hands its outcome to [`synced`].
pub async fn drive<D: Disk>(
    node: &mut Node,
    replicas: &mut BTreeMap<GroupId, Replica<D>>,
    io: &mut impl Io,
) -> Result<Vec<Syncing<D::File>>, DriveError> {
    let mut started = Vec::new();
    for _ in 0..64 {
        let NodeReady { work, envelopes } = node.take_ready();
        if work.is_empty() && envelopes.is_empty() {
            break;
        }
        for gw in &work {
            if let Some(hs) = gw.hard_state {
                let r = replicas.get_mut(&gw.group).expect("a replica per group");
                r.save_hard_state(hs).await?;
            }
        }
        for (to, env) in envelopes {
            io.send(to, env).await;
        }
        for gw in work {
            let group = gw.group;
            let r = replicas.get_mut(&group).expect("a replica per group");
            let mut reads = Vec::new();
            let mut wrote = false;
            // The term history goes to disk before the first append that needs it (and
            // after any truncation before that), so it always covers the log on disk.
            // It is the group's final one of this step, so appends a later truncation or
            // restart of the same step undoes are not written at all (written, they would
            // sit on disk under a history that no longer names their term).
            let mut epochs = gw.epochs;
            for op in elide_undone(gw.storage) {
                let own = matches!(op, StorageOp::AppendOwn(_));
                match op {
                    StorageOp::Append(batches) | StorageOp::AppendOwn(batches) => {
                        if let Some(e) = epochs.take() {
                            r.save_epochs(&e).await?;
                        }
                        for b in batches {
                            let appended = if own {
                                r.log.append_own(b.clone(), io.wall_ms()).await
                            } else {
                                r.log.append_at(b.clone(), io.wall_ms()).await
                            };
                            appended.map_err(err("append"))?;
                            r.producers.on_batch(&b);
                            let term = BatchHeader::parse(&b)
                                .map_or(0, |h| h.partition_leader_epoch as Term);
                            io.appended(group, &b, term);
                        }
                        wrote = true;
                    }
                    StorageOp::Truncate(offset) => {
                        r.truncate(offset, io).await?;
                        io.truncated(group, offset);
                        wrote = true;
                    }
                    StorageOp::Read {
                        peer,
                        from,
                        max_bytes,
                    } => reads.push((peer, from, max_bytes)),
                    StorageOp::AdvanceStart(offset) => {
                        r.advance_start(offset)
                            .await
                            .map_err(err("advance log start"))?;
                        io.start_moved(group, r.log.log_start_offset());
                    }
                    StorageOp::Restart(offset) => {
                        r.log.restart_at(offset).await.map_err(err("restart log"))?;
                        r.producers = ProducerTable::default();
                        io.restarted(group, offset);
                        wrote = true;
                    }
                }
            }
            if let Some(e) = epochs.take() {
                r.save_epochs(&e).await?;
            }
            r.dirty |= wrote;
            if r.dirty {
                if r.syncing {
                    // Written now, beside the sync in flight; synced by the next one.
                    r.log.write().await.map_err(err("write"))?;
                } else {
                    started.extend(start_sync(node, r, group, io).await?);
                }
            }
            for (peer, from, max_bytes) in reads {
                let end = r.log.next_offset();
                let read = read_checked(&r.log, from, max_bytes, end).await;
                let Some(raft) = node.group_mut(group) else {
                    continue;
                };
                match read {
                    Ok(got) => raft.on_read(io.now_ms(), peer, from, got.bytes),
                    Err(f) => {
                        io.event(format!(
                            "replication read g{group} from {from}: {}",
                            f.error
                        ));
                        if f.corrupt_on_disk {
                            raft.on_storage_corrupt(io.now_ms());
                        }
                        raft.on_read(io.now_ms(), peer, from, Bytes::new());
                    }
                }
            }
        }
    }
    Ok(started)
}

/// Writes what `group` appended and starts its fdatasync; with nothing new to sync, tells
/// the group what is durable at once (a truncation alone is durable on return).
async fn start_sync<D: Disk>(
    node: &mut Node,
    r: &mut Replica<D>,
    group: GroupId,
    io: &mut impl Io,
) -> Result<Option<Syncing<D::File>>, DriveError> {
    r.dirty = false;
    match r.log.write_pending().await.map_err(err("write"))? {
        Some(point) => {
            r.syncing = true;
            Ok(Some(Syncing { group, point }))
        }
        None => {
            node.on_persisted(io.now_ms(), group, r.log.durable_offset());
            Ok(None)
        }
    }
}

/// A sync [`drive`] started has ended with `outcome`: the group learns what it made
/// durable (nothing, if a truncation or restart overtook it), and if the group wrote more
/// meanwhile the next sync starts (returned, like [`drive`]'s). The caller drives again
/// afterwards: the group may have acknowledgements to send. A failed sync is returned
/// as an error, like any storage error of [`drive`].
pub async fn synced<D: Disk>(
    node: &mut Node,
    replicas: &mut BTreeMap<GroupId, Replica<D>>,
    s: Syncing<D::File>,
    outcome: std::io::Result<()>,
    io: &mut impl Io,
) -> Result<Option<Syncing<D::File>>, DriveError> {
    outcome.map_err(io_err("sync"))?;
    let group = s.group;
    // The group may be gone (a deleted topic): nothing to tell.
    let Some(r) = replicas.get_mut(&group) else {
        return Ok(None);
    };
    r.syncing = false;
    let durable = match r.log.complete_sync(&s.point) {
        None => {
            io.event(format!(
                "g{group}: a truncation overtook the sync to {}",
                s.point.end()
            ));
            None
        }
        d => d,
    };
    if let Some(durable) = durable {
        node.on_persisted(io.now_ms(), group, durable);
    }
    if r.dirty {
        return start_sync(node, r, group, io).await;
    }
    Ok(None)
}

/// [`drive`], with every sync it starts awaited in turn and the work their completion
/// readies (acknowledgements, the next syncs) driven too: for callers with nothing to
/// overlap a sync with (opening a group, the controller group, tests).
pub async fn drive_synced<D: Disk>(
    node: &mut Node,
    replicas: &mut BTreeMap<GroupId, Replica<D>>,
    io: &mut impl Io,
) -> Result<(), DriveError> {
    let mut syncs = drive(node, replicas, io).await?;
    // Every sync started is seen through (a group left with one unfinished would never
    // sync again); the driving stops after 64 turns, as `drive`'s own loop does.
    let mut turns = 0;
    while !syncs.is_empty() {
        for s in std::mem::take(&mut syncs) {
            let outcome = s.point.wait().await;
            syncs.extend(synced(node, replicas, s, outcome, io).await?);
        }
        turns += 1;
        if turns < 64 {
            syncs.extend(drive(node, replicas, io).await?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_state_slots_keep_the_newest_valid_one() {
        let a = encode_hard(
            HardState {
                term: 3,
                voted_for: Some(2),
            },
            1,
        );
        let b = encode_hard(
            HardState {
                term: 4,
                voted_for: None,
            },
            2,
        );
        assert_eq!(decode_hard([&a, &b]).0.term, 4);
        let mut torn = b.clone();
        torn[9] ^= 1;
        assert_eq!(
            decode_hard([&a, &torn]),
            (
                HardState {
                    term: 3,
                    voted_for: Some(2)
                },
                1
            )
        );
        assert_eq!(decode_hard([&[], &[]]), (HardState::default(), 0));
    }

    #[test]
    fn appends_a_later_truncation_undoes_are_not_written() {
        use corelog_storage::batch::{self, build};
        let at = |base: i64| {
            let mut b = build::batch(&[b"x".as_slice()], 0);
            batch::set_base_offset(&mut b, base);
            bytes::Bytes::from(b)
        };
        let ops = vec![
            StorageOp::Append(vec![at(8), at(9)]),
            StorageOp::Append(vec![at(10)]),
            StorageOp::Truncate(9),
            StorageOp::Append(vec![at(9)]),
        ];
        let out = elide_undone(ops);
        let bases = |o: &StorageOp| match o {
            StorageOp::Append(bs) => bs
                .iter()
                .map(|b| BatchHeader::parse(b).unwrap().base_offset)
                .collect(),
            _ => vec![],
        };
        assert_eq!(out.len(), 3);
        assert_eq!(bases(&out[0]), vec![8]);
        assert_eq!(out[1], StorageOp::Truncate(9));
        assert_eq!(bases(&out[2]), vec![9]);
        // A restart undoes everything before it but the reads.
        let out = elide_undone(vec![
            StorageOp::Append(vec![at(3)]),
            StorageOp::Read {
                peer: 2,
                from: 0,
                max_bytes: 10,
            },
            StorageOp::AdvanceStart(2),
            StorageOp::Restart(7),
            StorageOp::Append(vec![at(7)]),
        ]);
        assert!(matches!(out[0], StorageOp::Read { .. }));
        assert_eq!(out[1], StorageOp::Restart(7));
        assert_eq!(bases(&out[2]), vec![7]);
        assert_eq!(out.len(), 3);
    }

    /// A follower's sync starts, then a new leader's Append truncates what it covers and
    /// appends other entries before it ends: its end proves nothing about them, so they
    /// are neither counted durable nor acknowledged until a sync of their own.
    #[test]
    fn a_sync_a_truncation_overtook_proves_nothing() {
        use crate::message::{Append, Message};
        use crate::raft::{Raft, RaftConfig};
        use corelog_storage::SimDisk;
        use corelog_storage::batch::{self, build};

        /// Records what the follower told its leaders it holds durably.
        #[derive(Default)]
        struct Acks(Vec<Offset>);
        impl Io for Acks {
            fn now_ms(&self) -> u64 {
                1
            }
            async fn send(&mut self, _to: NodeId, env: Envelope) {
                for (_, m) in env.items {
                    if let Message::AppendResponse {
                        success: true, end, ..
                    } = m
                    {
                        self.0.push(end);
                    }
                }
            }
        }
        let entry = |base: i64, term: i32| {
            let mut b = build::batch(&[b"x".as_slice()], 0);
            batch::set_base_offset(&mut b, base);
            batch::set_partition_leader_epoch(&mut b, term);
            Bytes::from(b)
        };
        let append = |term: Term, prev_end: Offset, prev_term: Term, entries: Vec<Bytes>| {
            let from = if term == 1 { 1 } else { 3 };
            Envelope {
                from,
                items: vec![(
                    7,
                    Message::Append(Append {
                        term,
                        prev_end,
                        prev_term,
                        commit: 0,
                        entries,
                        sent_ms: 1,
                        log_start: 0,
                    }),
                )],
                claims: None,
                proposals: Vec::new(),
            }
        };
        futures_lite::future::block_on(async {
            let disk = SimDisk::new(5);
            let (replica, rec) = Replica::open(disk, LogConfig::default(), |_, _| {})
                .await
                .unwrap();
            let mut node = Node::new(2);
            let raft = Raft::new(RaftConfig::new(2, vec![1, 2, 3], 9), rec.hard, rec.log, 0);
            node.add_group(7, raft);
            let mut replicas = BTreeMap::from([(7, replica)]);
            let io = &mut Acks::default();

            // Leader 1 (term 1) sends offsets 0 and 1; their sync starts (and takes its
            // snapshot of the file now) but has not ended.
            node.on_envelope(1, append(1, 0, 0, vec![entry(0, 1), entry(1, 1)]));
            let mut started = drive(&mut node, &mut replicas, io).await.unwrap();
            assert_eq!(started.len(), 1);
            let old = started.pop().unwrap();
            assert_eq!(old.point.end(), 2);
            let old_outcome = old.point.wait().await;

            // Leader 3 (term 2) replaces offset 1 and adds 2: written, not synced.
            node.on_envelope(1, append(2, 1, 1, vec![entry(1, 2), entry(2, 2)]));
            let started = drive(&mut node, &mut replicas, io).await.unwrap();
            assert!(started.is_empty(), "one sync in flight per group");
            assert_eq!(replicas[&7].log.next_offset(), 3);
            assert!(io.0.is_empty(), "acked before durable: {:?}", io.0);

            // The old sync ends: offset 1 of term 2 is not durable, nothing is acked.
            let next = synced(&mut node, &mut replicas, old, old_outcome, io)
                .await
                .unwrap()
                .expect("the new entries get a sync of their own");
            drive(&mut node, &mut replicas, io).await.unwrap();
            assert!(node.group(7).unwrap().durable_end() <= 1);
            assert!(io.0.iter().all(|&end| end <= 1), "acked {:?}", io.0);

            // Their own sync ends: durable, and acknowledged, through offset 2.
            assert_eq!(next.point.end(), 3);
            let outcome = next.point.wait().await;
            assert!(
                synced(&mut node, &mut replicas, next, outcome, io)
                    .await
                    .unwrap()
                    .is_none()
            );
            drive(&mut node, &mut replicas, io).await.unwrap();
            assert_eq!(node.group(7).unwrap().durable_end(), 3);
            assert_eq!(io.0.last(), Some(&3));
        });
    }

    #[test]
    fn epoch_slots_round_trip_and_refuse_damage() {
        let e = EpochCache::from_runs(vec![(1, 0), (3, 10), (4, 25)]).unwrap();
        let bytes = encode_epochs(&e, 7);
        let (back, seq) = decode_epochs(&bytes).unwrap();
        assert_eq!((back.runs(), seq), (e.runs(), 7));
        let mut bad = bytes.clone();
        bad[14] ^= 1;
        assert!(decode_epochs(&bad).is_none());
        // A count that claims more than the slot holds is refused, not read past.
        let mut huge = bytes;
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_epochs(&huge).is_none());
    }
}
