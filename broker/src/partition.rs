//! One partition on its owning shard: a task that owns the log and drives the partition's
//! replication group (here a group of one), fed by a bounded queue. Everything that
//! touches the log goes through the queue, so appends, syncs and reads never race and no
//! lock is needed; produces that queue up while a sync runs share the next one (group
//! commit).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use corelog_replication::driver::{self, DriveError, Replica, StartMove, Syncing};
use corelog_replication::producers::SeqCheck;
use corelog_replication::{
    Envelope, EpochCache, GroupId, HardState, Message, Node, NodeId, Raft, RaftConfig, Role,
};
use corelog_storage::batch::{self, BatchError, BatchHeader};
use corelog_storage::{Disk, GlommioDisk, GlommioFile, Log, StorageError};
use event_listener::Event;
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use serde::Deserialize;

use crate::cluster::RpcIo;
use crate::config::TopicSettings;
use crate::errors as code;
use crate::recent::RecentBatches;
use crate::records::Kept;
use crate::util::{mono_ms, wall_ms};

/// What a connection needs to know without asking the task: updated by the task.
#[derive(Debug, Clone, Copy, Default)]
pub struct Status {
    pub high_watermark: i64,
    pub log_start: i64,
    /// False once storage failed: every request gets KAFKA_STORAGE_ERROR.
    pub online: bool,
    /// Bytes the log holds on disk.
    pub size_bytes: u64,
    /// This replica leads the partition and its lease holds: it may serve reads.
    pub is_leader: bool,
}

/// Who leads a partition as this replica sees it: what Metadata reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// -1: no leader known.
    pub leader: i32,
    /// The leader's term (Kafka's leader epoch); -1 with no leader.
    pub epoch: i32,
    /// The in-sync replicas: the leader's own account; a follower names the leader and
    /// itself while it hears from it.
    pub isr: Vec<i32>,
}

/// Where a partition's replication group runs: its group id, its voters (the replica
/// set; this broker alone for a single-node broker) and the transport to the others.
#[derive(Clone)]
pub struct Membership {
    pub group: GroupId,
    pub voters: Vec<NodeId>,
    pub peers: Option<Rc<crate::cluster::transport::Peers>>,
    /// Told whenever the view (leader, epoch, ISR) changes.
    pub on_view: Option<Rc<dyn Fn(GroupId, View)>>,
}

impl Membership {
    /// A partition of a single-node broker: a group of one.
    pub fn solo(node_id: i32) -> Self {
        Self {
            group: SOLO_GROUP,
            voters: vec![node_id.max(0) as NodeId],
            peers: None,
            on_view: None,
        }
    }
}

#[derive(Debug)]
pub struct ProduceOutcome {
    pub error: i16,
    pub base_offset: i64,
    pub log_start: i64,
    pub message: Option<String>,
}

#[derive(Debug)]
pub struct FetchOutcome {
    pub error: i16,
    pub high_watermark: i64,
    pub log_start: i64,
    /// Stored batches, uncopied: the response sends them by reference.
    pub records: crate::frame::Records,
}

pub enum Cmd {
    Produce {
        records: Option<Bytes>,
        /// -1 (all): answered once committed; 1: once the leader's copy is durable.
        acks: i16,
        reply: oneshot::Sender<ProduceOutcome>,
    },
    /// Replication messages from a peer broker.
    Raft {
        from: NodeId,
        items: Vec<Message>,
    },
    Fetch {
        offset: i64,
        max_bytes: usize,
        reply: oneshot::Sender<FetchOutcome>,
    },
    /// Admin requests about one partition (DeleteRecords, DescribeProducers).
    Query {
        query: Query,
        reply: oneshot::Sender<Result<Answer, (i16, String)>>,
    },
    Configure(TopicSettings),
    /// Drop whole segments below this offset (a newer snapshot supersedes them).
    DeleteBefore {
        offset: u64,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Sync and close the log; the task ends.
    Close(oneshot::Sender<()>),
}

/// An admin question for a partition task, carried across shards as is.
#[derive(Debug, Clone, Copy)]
pub enum Query {
    /// ListOffsets: the offset for a timestamp or one of Kafka's special values.
    ListOffset { timestamp: i64 },
    /// Move the log start to `offset` (-1: the high watermark).
    DeleteRecords { offset: i64 },
    /// The idempotent producers with batches in the log.
    Producers,
    /// OffsetForLeaderEpoch: the largest epoch at or below `epoch` and where it ends.
    EpochEnd { epoch: i32 },
}

#[derive(Debug)]
pub enum Answer {
    /// ListOffsets' offset and timestamp.
    Offset {
        offset: i64,
        timestamp: i64,
    },
    /// The log start after DeleteRecords (Kafka's low watermark).
    LogStart(i64),
    Producers(Vec<ProducerInfo>),
    /// (-1, -1) when the log holds no epoch at or below the one asked for.
    EpochEnd {
        epoch: i32,
        end_offset: i64,
    },
}

/// One active producer, as DescribeProducers reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
}

/// The shard's handle on a partition task.
#[derive(Clone)]
pub struct PartitionHandle {
    pub tx: mpsc::Sender<Cmd>,
    /// One long-lived sender for messages offered without waiting: a fresh clone of a
    /// futures sender always has a slot of its own, so `try_send` on clones would never
    /// see the queue full.
    offer_tx: Rc<std::cell::RefCell<mpsc::Sender<Cmd>>>,
    /// The replication group this task runs (changes only with a new task).
    pub group: GroupId,
    pub status: Rc<Cell<Status>>,
    /// Notified whenever the high watermark moves (long-poll fetches wait on it).
    pub changed: Rc<Event>,
    /// The newest committed batches, for fetches at the head (see `recent`).
    pub recent: Rc<RefCell<RecentBatches>>,
}

impl PartitionHandle {
    /// Sends a command; false if the task is gone (closed or failed).
    pub async fn send(&self, cmd: Cmd) -> bool {
        let mut tx = self.tx.clone();
        futures::SinkExt::send(&mut tx, cmd).await.is_ok()
    }

    /// Queues a command without waiting: dropped when the queue is full (replication
    /// messages, which Raft retransmits).
    pub fn offer(&self, cmd: Cmd) {
        let _ = self.offer_tx.borrow_mut().try_send(cmd);
    }
}

/// How often a partition that ran out of disk space checks whether it can reopen.
const REOPEN_CHECK_MS: u64 = 1000;

/// How much more free space than at the ENOSPC a reopen waits for.
const REOPEN_MARGIN: u64 = 1 << 20;

/// ENOSPC, or the short direct-I/O write a nearly full file system gives instead of it.
fn is_enospc(e: &StorageError) -> bool {
    use std::io::ErrorKind;
    matches!(e, StorageError::Io(io) if io.raw_os_error() == Some(28)
        || matches!(io.kind(), ErrorKind::StorageFull | ErrorKind::WriteZero))
}

/// Queue bound per partition: beyond it producers wait (back-pressure).
const QUEUE: usize = 1024;

/// The group id of a single-node broker's partitions (each task runs its own node, so
/// ids need not differ; a cluster's come from the controller).
const SOLO_GROUP: GroupId = 1;

/// A produce waits at most this long for its commit (Kafka's request timeout default).
const PRODUCE_TIMEOUT_MS: u64 = 30_000;

/// How far behind a follower may fall and stay in the ISR (`replica.lag.time.max.ms`).
const ISR_LAG_MS: u64 = 10_000;

/// What a partition task runs on, read back from its dir by the replica driver (the same
/// code the simulator runs): the recovered log with its term, vote and term history, the
/// replication group restarted from them, and the idempotent producers found in the log.
/// Opening a partition and reopening one after ENOSPC both start here.
struct Loaded {
    node: Node,
    replicas: BTreeMap<GroupId, Replica<GlommioDisk>>,
}

async fn load(
    dir: &Path,
    node_id: i32,
    settings: &TopicSettings,
    membership: &Membership,
) -> Result<Loaded, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    let disk = GlommioDisk::open_dir(dir).await.map_err(|e| at(&e))?;
    // A dir from before the replica driver kept term, vote and term history in JSON:
    // carried over once (the JSON goes only after the driver's files are durable).
    if let Some(saved) = RaftFile::load(dir)? {
        let epochs = EpochCache::from_runs(saved.epochs).ok_or_else(|| {
            at(&format!(
                "{RAFT_FILE} holds no valid term history; move it away to start this partition's history afresh"
            ))
        })?;
        let hard = HardState {
            term: saved.term,
            voted_for: saved.voted_for,
        };
        Replica::import(&disk, hard, &epochs)
            .await
            .map_err(|e| at(&e))?;
        std::fs::remove_file(dir.join(RAFT_FILE)).map_err(|e| at(&e))?;
        // The removal durable too: a JSON that came back after a crash would be imported
        // over newer state (import skips files that hold a valid state, but only then).
        disk.sync_dir().await.map_err(|e| at(&e))?;
    }
    // The driver rebuilds the idempotent producers from the log as it recovers it.
    let (replica, recovered) = Replica::open(disk, settings.log.clone(), |_, _| {})
        .await
        .map_err(|e| at(&e))?;
    let id = node_id.max(0) as u32;
    let now = mono_ms();
    let mut raft = Raft::new(
        RaftConfig::new(
            id,
            membership.voters.clone(),
            u64::from(crc32c::crc32c(dir.as_os_str().as_encoded_bytes())) ^ now,
        ),
        recovered.hard,
        recovered.log,
        now,
    );
    if let Some(d) = &recovered.damaged {
        // Reads of the damaged range fail with KAFKA_STORAGE_ERROR; the group decides
        // whether to hand leadership to a sound copy (a group of one keeps it).
        tracing::error!(dir = %dir.display(), "partition log damaged: {d}");
        raft.on_storage_corrupt(now);
    }
    if membership.voters.len() > 1
        && membership.voters.first() == Some(&id)
        && raft.term() == 0
        && raft.end() == 0
    {
        raft.campaign_now(now);
    }
    raft.on_tick(now);
    let mut node = Node::new(id);
    node.add_group(membership.group, raft);
    Ok(Loaded {
        node,
        replicas: BTreeMap::from([(membership.group, replica)]),
    })
}

/// Opens (recovering) the partition's log in `dir` and starts its task.
pub async fn open(
    dir: PathBuf,
    node_id: i32,
    settings: TopicSettings,
    retention_check: Duration,
    membership: Membership,
) -> Result<PartitionHandle, String> {
    if membership.peers.is_some() {
        claim_dir(&dir, membership.group)?;
    }
    let Loaded { node, replicas } = load(&dir, node_id, &settings, &membership).await?;
    let group = membership.group;
    let log = &replicas[&membership.group].log;
    let status = Rc::new(Cell::new(Status {
        high_watermark: 0,
        log_start: log.log_start_offset() as i64,
        online: true,
        size_bytes: log.size_bytes(),
        is_leader: false,
    }));
    let changed = Rc::new(Event::new());
    let recent = Rc::new(RefCell::new(RecentBatches::default()));
    let (tx, rx) = mpsc::channel(QUEUE);
    let internal = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("__"));
    let mut task = PartitionTask {
        internal,
        dir,
        node_id,
        node,
        replicas,
        settings,
        status: status.clone(),
        changed: changed.clone(),
        recent: recent.clone(),
        out_of_space: None,
        io: RpcIo {
            peers: membership.peers.clone(),
        },
        membership,
        pending: Vec::new(),
        syncing: None,
        view: View::default(),
    };
    // The election of a group of one happened in `on_tick`: persist its term (and the
    // new leader's first batch) before serving anything. A full disk at start does not
    // keep the broker down: the partition waits for space like one that filled up later.
    if let Err(e) = task.drive_synced().await {
        if !is_enospc(e.storage()) {
            return Err(e.to_string());
        }
        task.fail(e.storage());
    }
    task.publish();
    glommio::spawn_local(task.run(rx, retention_check)).detach();
    Ok(PartitionHandle {
        offer_tx: Rc::new(std::cell::RefCell::new(tx.clone())),
        tx,
        group,
        status,
        changed,
        recent,
    })
}

/// The file naming the replication group a clustered partition's dir belongs to.
const GROUP_FILE: &str = "corelog-group";

/// Makes `dir` the home of `group`: a dir left by an earlier group of the same name (a
/// topic deleted while this broker was down, then created again) is emptied first, so
/// the new group never starts from the old one's term, vote and log (which could win an
/// election and overwrite what the new group committed). The marker is durable before
/// the group writes anything.
fn claim_dir(dir: &Path, group: GroupId) -> Result<(), String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    let marker = dir.join(GROUP_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(g) if g.trim() == group.to_string() => return Ok(()),
        Ok(g) => {
            tracing::warn!(dir = %dir.display(), old = g.trim(), new = group, "partition dir held another group's replica; starting it afresh")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(&e)),
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| at(&e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| at(&e))?;
    let mut f = std::fs::File::create(&marker).map_err(|e| at(&e))?;
    std::io::Write::write_all(&mut f, group.to_string().as_bytes()).map_err(|e| at(&e))?;
    f.sync_all().map_err(|e| at(&e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| at(&e))?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| at(&e))?;
    }
    Ok(())
}

/// Term, vote and term history as brokers before the replica driver kept them (JSON);
/// read once to carry them over, then removed.
#[derive(Debug, Clone, Default, Deserialize)]
struct RaftFile {
    term: u32,
    voted_for: Option<u32>,
    epochs: Vec<(u32, u64)>,
}

const RAFT_FILE: &str = "raft-state.json";

impl RaftFile {
    fn load(dir: &Path) -> Result<Option<Self>, String> {
        match std::fs::read(dir.join(RAFT_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("{}: {e}", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }
}

/// The offset and timestamp of the committed record with the largest timestamp (the first
/// such), for ListOffsets' MAX_TIMESTAMP; (-1, -1) for an empty log. Walks the batch
/// headers (Kafka keeps a time index per segment; this is a rare admin query): exact for
/// uncompressed batches, the batch's last offset for compressed ones, as Kafka answered
/// before KIP-734 made it exact.
async fn offset_of_max_timestamp(
    log: &Log<GlommioDisk>,
    high_watermark: i64,
) -> Result<(i64, i64), StorageError> {
    let mut best = (-1i64, -1i64); // (offset, timestamp)
    let start = log.log_start_offset() as i64;
    let mut from = log.log_start_offset();
    let end = (high_watermark.max(0) as u64).min(log.next_offset());
    while from < end {
        let read = log.read(from, 4 << 20).await?;
        if read.bytes.is_empty() || read.next_offset <= from {
            break;
        }
        let mut rest = &read.bytes[..];
        while let Ok(h) = BatchHeader::parse(rest) {
            if (h.base_offset as u64) >= end || h.size > rest.len() {
                break;
            }
            // Records below a DeleteRecords start are gone, even in the batch holding it.
            if h.max_timestamp > best.1 && !h.is_control() && h.last_offset() >= start {
                let hit = match batch::record_timestamps(&rest[..h.size]) {
                    Some(ts) => ts
                        .into_iter()
                        .map(|(d, t)| (h.base_offset + i64::from(d), t))
                        .filter(|(o, t)| *o >= start && *t > best.1)
                        .fold(None, |m: Option<(i64, i64)>, (o, t)| match m {
                            Some((_, mt)) if mt >= t => m,
                            _ => Some((o, t)),
                        }),
                    None => Some((h.last_offset(), h.max_timestamp)),
                };
                if let Some(hit) = hit {
                    best = hit;
                }
            }
            rest = &rest[h.size..];
        }
        from = read.next_offset;
    }
    Ok(best)
}

struct PartitionTask {
    dir: PathBuf,
    node_id: i32,
    /// A write failed with ENOSPC (the reserve did not hold: another writer filled the
    /// disk, or `storage_min_free_bytes` is 0). Committed data is still served; writes are
    /// refused until space is back above the reserve and the task reopened its dir.
    /// Holds the free bytes seen when it happened: reopening waits for more than that, so
    /// an ENOSPC that free space does not show (no reserve, quotas) cannot make the task
    /// reopen, and walk its log, every second.
    out_of_space: Option<u64>,
    /// An internal topic's partition (`__consumer_offsets`): keeps writing into the disk
    /// reserve longer than user topics.
    internal: bool,
    /// The partition's replication group (of one) and its durable side, carried out by
    /// the replica driver.
    node: Node,
    replicas: BTreeMap<GroupId, Replica<GlommioDisk>>,
    settings: TopicSettings,
    status: Rc<Cell<Status>>,
    changed: Rc<Event>,
    /// Filled as this replica leads; emptied in `publish` when it stops or the term moves.
    recent: Rc<RefCell<RecentBatches>>,
    membership: Membership,
    io: RpcIo,
    /// Produces waiting for their batches to commit (or, acks=1, to be durable here).
    pending: Vec<Pending>,
    /// The log's fdatasync in flight (one at most): the task takes and writes the next
    /// rounds while it runs, and hands its outcome to the driver when it ends.
    syncing: Option<glommio::Task<(Syncing<GlommioFile>, std::io::Result<()>)>>,
    /// The view last published.
    view: View,
}

/// What ends the task's wait between rounds.
enum Wake {
    Cmd(Option<Cmd>),
    Timer,
    Synced(Syncing<GlommioFile>, std::io::Result<()>),
}

/// A produce waiting for its batch to commit.
struct Pending {
    end: u64,
    base: i64,
    /// The last batch proposed (or found as a duplicate) and its term: the answer is
    /// success only if that offset still holds an entry of that term.
    check: Option<(u64, u32)>,
    acks: i16,
    deadline_ms: u64,
    reply: oneshot::Sender<ProduceOutcome>,
}

impl PartitionTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, retention_check: Duration) {
        let mut next_retention = mono_ms() + retention_check.as_millis() as u64;
        loop {
            let mut wait = next_retention.saturating_sub(mono_ms());
            if self.replicated() {
                // Heartbeats, elections and retransmits run on the group's deadlines.
                wait = wait.min(self.node.next_deadline().saturating_sub(mono_ms()));
                if !self.pending.is_empty() {
                    wait = wait.min(1000);
                }
            }
            if let Some(free_then) = self.out_of_space {
                if crate::disk_space::check_write(self.internal).is_ok()
                    && crate::disk_space::free_bytes() > free_then.saturating_add(REOPEN_MARGIN)
                {
                    self.reopen().await;
                }
                wait = wait.min(REOPEN_CHECK_MS);
            }
            let syncing = &mut self.syncing;
            // The sync's end first: with commands always queued (a busy partition), it
            // would otherwise wait, and the produces it completes with it.
            let wake = futures_lite::future::or(
                async {
                    match syncing {
                        Some(t) => {
                            let (s, outcome) = t.await;
                            Wake::Synced(s, outcome)
                        }
                        None => std::future::pending().await,
                    }
                },
                futures_lite::future::or(async { Wake::Cmd(rx.next().await) }, async {
                    glommio::timer::sleep(Duration::from_millis(wait)).await;
                    Wake::Timer
                }),
            )
            .await;
            let mut cmds = Vec::new();
            match wake {
                Wake::Cmd(Some(cmd)) => cmds.push(cmd),
                Wake::Cmd(None) => return self.close().await, // every handle dropped
                Wake::Timer => {}
                Wake::Synced(s, outcome) => {
                    self.syncing = None;
                    self.synced(s, outcome).await;
                }
            }
            // Everything already queued shares this round (and its one sync).
            while cmds.len() < QUEUE {
                match rx.try_recv() {
                    Ok(cmd) => cmds.push(cmd),
                    Err(_) => break,
                }
            }
            if mono_ms() >= next_retention {
                next_retention = mono_ms() + retention_check.as_millis() as u64;
                self.retention().await;
            }
            if let Some(reply) = self.round(cmds).await {
                self.close().await;
                let _ = reply.send(());
                return;
            }
        }
    }

    /// Handles one round of commands: replication messages and appends are taken in,
    /// reads answered (from what is committed), then one drive of the group (one sync).
    /// Returns the reply of a Close, after which the task ends.
    async fn round(&mut self, cmds: Vec<Cmd>) -> Option<oneshot::Sender<()>> {
        let mut reads = Vec::new();
        let mut close = None;
        for cmd in cmds {
            match cmd {
                Cmd::Raft { from, items } => {
                    let group = self.membership.group;
                    self.node.on_envelope(
                        mono_ms(),
                        Envelope {
                            from,
                            items: items.into_iter().map(|m| (group, m)).collect(),
                            claims: None,
                            proposals: Vec::new(),
                        },
                    );
                }
                Cmd::Produce {
                    records,
                    acks,
                    reply,
                } => {
                    if let Some(p) = self.produce(records, acks, reply).await {
                        self.pending.push(p);
                    }
                }
                Cmd::Configure(s) => {
                    if let Err(e) = self.log_mut().set_config(s.log.clone()) {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "config not applied");
                    } else {
                        self.settings = s;
                    }
                }
                Cmd::Close(reply) => close = Some(reply),
                Cmd::Query {
                    query: Query::DeleteRecords { offset },
                    reply,
                } => {
                    let _ = reply.send(self.delete_records(offset).await);
                }
                Cmd::DeleteBefore { offset, reply } => {
                    // Followers drop theirs as the leader's start reaches them.
                    let before = self.log().segment_count();
                    let r = self
                        .move_start(StartMove::SegmentsBelow(offset))
                        .await
                        .map(|_| before.saturating_sub(self.log().segment_count()))
                        .map_err(|e| e.to_string());
                    self.publish();
                    let _ = reply.send(r);
                }
                other => reads.push(other),
            }
        }
        if self.replicated() {
            self.node.on_tick(mono_ms());
        }
        // The round's appends are written and their sync started first; the reads (of
        // what was committed before, as nothing of this round is committed before its
        // sync ends) then run beside that sync instead of holding up the writes.
        if let Err(e) = self.drive().await {
            self.fail(e.storage());
        }
        for cmd in reads {
            self.read(cmd).await;
        }
        self.publish();
        self.resolve_pending();
        close
    }

    /// Whether the group has other voters (a replicated partition).
    fn replicated(&self) -> bool {
        self.membership.voters.len() > 1
    }

    /// Answers the produces whose fate is known: committed (acks=all) or durable here
    /// (acks=1) at an entry of the term proposed in; or lost with the leadership, the
    /// storage, or the request timeout.
    fn resolve_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let status = self.status.get();
        let now = mono_ms();
        let (commit, durable, term, leader) = {
            let r = self.raft();
            (
                r.commit(),
                r.durable_end(),
                r.term(),
                r.role() == Role::Leader,
            )
        };
        let out_of_space = self.out_of_space.is_some();
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            let reached = if p.acks == 1 { durable } else { commit };
            let ours = p
                .check
                .is_none_or(|(base, t)| self.raft().epochs().term_at(base) == t);
            let (error, message) = if !status.online || out_of_space {
                (
                    code::KAFKA_STORAGE_ERROR,
                    Some(if out_of_space {
                        "the disk ran out of space; writes resume once space is back".to_string()
                    } else {
                        "the partition's storage failed".to_string()
                    }),
                )
            } else if reached >= p.end && ours {
                (code::NONE, None)
            } else if !ours || !leader || p.check.is_some_and(|(_, t)| t != term && commit < p.end)
            {
                (
                    code::NOT_LEADER_OR_FOLLOWER,
                    Some("leadership moved before the batch committed; retry".to_string()),
                )
            } else if now >= p.deadline_ms {
                (
                    code::REQUEST_TIMED_OUT,
                    Some("the batch did not commit in time".to_string()),
                )
            } else {
                self.pending.push(p);
                continue;
            };
            let _ = p.reply.send(ProduceOutcome {
                error,
                base_offset: if error == code::NONE { p.base } else { -1 },
                log_start: status.log_start,
                message,
            });
        }
    }

    async fn produce(
        &mut self,
        records: Option<Bytes>,
        acks: i16,
        reply: oneshot::Sender<ProduceOutcome>,
    ) -> Option<Pending> {
        let status = self.status.get();
        let refuse = |error: i16, message: String| ProduceOutcome {
            error,
            base_offset: -1,
            log_start: status.log_start,
            message: Some(message),
        };
        if !status.online {
            let _ = reply.send(refuse(
                code::KAFKA_STORAGE_ERROR,
                "the partition's storage failed".into(),
            ));
            return None;
        }
        if self.raft().role() != Role::Leader {
            let leader = self.raft().leader();
            let _ = reply.send(refuse(
                code::NOT_LEADER_OR_FOLLOWER,
                format!("this broker does not lead the partition (leader: {leader:?})"),
            ));
            return None;
        }
        if self.out_of_space.is_some() {
            let _ = reply.send(refuse(
                code::KAFKA_STORAGE_ERROR,
                "the disk ran out of space; writes resume once space is back above the reserve"
                    .into(),
            ));
            return None;
        }
        // Retriable: the producer retries and succeeds once space comes back.
        if let Err(why) = crate::disk_space::check_write(self.internal) {
            let _ = reply.send(refuse(code::KAFKA_STORAGE_ERROR, why));
            return None;
        }
        crate::disk_space::note_written(records.as_ref().map_or(0, |r| r.len() as u64));
        let batches = match split_batches(records.as_deref(), &self.settings, now_ms()) {
            Ok(b) => b,
            Err((error, message)) => {
                let _ = reply.send(refuse(error, message));
                return None;
            }
        };
        // Idempotence is checked for the whole request before anything is appended.
        let mut first_base = None;
        let mut end = 0;
        let mut check = None;
        for (range, h, rebuilt) in batches {
            match self.replica().producers.check(&h) {
                SeqCheck::Append => {}
                SeqCheck::Duplicate(base) => {
                    // Answered once the original is committed, as the original is.
                    first_base.get_or_insert(base as i64);
                    let dup_end = base + h.last_offset_delta.max(0) as u64 + 1;
                    if dup_end > end {
                        end = dup_end;
                        check = Some((base, self.raft().epochs().term_at(base)));
                    }
                    continue;
                }
                SeqCheck::Fenced(message) => {
                    let _ = reply.send(refuse(code::INVALID_PRODUCER_EPOCH, message));
                    return None;
                }
                SeqCheck::OutOfOrder(message) => {
                    let _ = reply.send(refuse(code::OUT_OF_ORDER_SEQUENCE_NUMBER, message));
                    return None;
                }
            }
            let bytes =
                rebuilt.unwrap_or_else(|| records.as_ref().expect("split checked")[range].to_vec());
            let term = self.raft().term();
            match self.raft_mut().propose(mono_ms(), bytes) {
                Ok((base, batch_end)) => {
                    if let Some((_, _, b)) = self.raft().newest_cached() {
                        let b = b.clone();
                        self.recent.borrow_mut().push(term, base, batch_end, b);
                    }
                    // Known before it is appended, so the next request in this round
                    // sees it; the driver's remember on append is then a no-op.
                    self.replica_mut().producers.remember(&h, base);
                    first_base.get_or_insert(base as i64);
                    end = batch_end;
                    check = Some((base, term));
                }
                Err(e) => {
                    let _ = reply.send(refuse(
                        code::NOT_LEADER_OR_FOLLOWER,
                        format!("not accepting writes: {e:?}"),
                    ));
                    return None;
                }
            }
        }
        // Appended, synced and committed by the round's one drive of the group.
        Some(Pending {
            end,
            base: first_base.unwrap_or(-1),
            check,
            acks,
            deadline_ms: mono_ms() + PRODUCE_TIMEOUT_MS,
            reply,
        })
    }

    async fn read(&mut self, cmd: Cmd) {
        let status = self.status.get();
        match cmd {
            Cmd::Fetch {
                offset,
                max_bytes,
                reply,
            } => {
                let hw = status.high_watermark;
                let mut out = FetchOutcome {
                    error: code::NONE,
                    high_watermark: hw,
                    log_start: status.log_start,
                    records: Default::default(),
                };
                if !status.online {
                    out.error = code::KAFKA_STORAGE_ERROR;
                } else if !status.is_leader {
                    out.error = code::NOT_LEADER_OR_FOLLOWER;
                } else if offset < status.log_start || offset > hw {
                    out.error = code::OFFSET_OUT_OF_RANGE;
                } else if offset < hw {
                    match self
                        .log()
                        .read_up_to(offset as u64, max_bytes.max(1), hw as u64)
                        .await
                    {
                        Ok(r) => out.records = r.bytes.into(),
                        Err(StorageError::OffsetOutOfRange { .. }) => {
                            out.error = code::OFFSET_OUT_OF_RANGE;
                        }
                        Err(e) => {
                            tracing::error!(dir = %self.dir.display(), error = %e, "fetch failed");
                            out.error = code::KAFKA_STORAGE_ERROR;
                        }
                    }
                }
                let _ = reply.send(out);
            }
            Cmd::Query { reply, .. } if status.online && !status.is_leader => {
                let _ = reply.send(Err((
                    code::NOT_LEADER_OR_FOLLOWER,
                    "this broker does not lead the partition".to_string(),
                )));
            }
            Cmd::Query {
                query: Query::ListOffset { timestamp },
                reply,
            } => {
                let answer = self
                    .list_offset(timestamp)
                    .await
                    .map(|(offset, timestamp)| Answer::Offset { offset, timestamp })
                    .map_err(|e| (e, "list offsets failed".to_string()));
                let _ = reply.send(answer);
            }
            Cmd::Query {
                query: Query::EpochEnd { epoch },
                reply,
            } => {
                let (epoch, end_offset) =
                    epoch_end(self.raft().epochs().runs(), self.raft().end(), epoch);
                let _ = reply.send(Ok(Answer::EpochEnd { epoch, end_offset }));
            }
            Cmd::Query {
                query: Query::Producers,
                reply,
            } => {
                let answer = if status.online {
                    Ok(Answer::Producers(self.producer_infos()))
                } else {
                    Err((
                        code::KAFKA_STORAGE_ERROR,
                        "the partition's storage failed".to_string(),
                    ))
                };
                let _ = reply.send(answer);
            }
            _ => {}
        }
    }

    /// ListOffsets for one partition: Ok((offset, timestamp)), or a Kafka error code.
    async fn list_offset(&self, timestamp: i64) -> Result<(i64, i64), i16> {
        let status = self.status.get();
        let hw = status.high_watermark;
        match timestamp {
            _ if !status.online => Err(code::KAFKA_STORAGE_ERROR),
            -1 => Ok((hw, -1)),
            // EARLIEST, and EARLIEST_LOCAL (KIP-1005): no tiered storage, so the
            // local log is the whole log.
            -2 | -4 => Ok((status.log_start, -1)),
            // LATEST_TIERED (KIP-1005): nothing is tiered, Kafka answers -1.
            -5 => Ok((-1, -1)),
            // MAX_TIMESTAMP (KIP-734).
            -3 => match offset_of_max_timestamp(self.log(), hw).await {
                Ok(hit) => Ok(hit),
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "list offsets failed");
                    Err(code::KAFKA_STORAGE_ERROR)
                }
            },
            t if t < 0 => Err(code::INVALID_REQUEST),
            t => match self.log().offset_for_timestamp(t).await {
                Ok(Some(hit)) if (hit.offset as i64) < hw => Ok((hit.offset as i64, hit.timestamp)),
                Ok(_) => Ok((-1, -1)),
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "list offsets failed");
                    Err(code::KAFKA_STORAGE_ERROR)
                }
            },
        }
    }

    /// DeleteRecords as Kafka's leader does it: -1 means the high watermark, anything
    /// past it or negative is OFFSET_OUT_OF_RANGE, and an offset below the log start
    /// changes nothing. Durable before it answers.
    async fn delete_records(&mut self, offset: i64) -> Result<Answer, (i16, String)> {
        let status = self.status.get();
        if !status.online {
            return Err((
                code::KAFKA_STORAGE_ERROR,
                "the partition's storage failed".into(),
            ));
        }
        if !status.is_leader {
            return Err((
                code::NOT_LEADER_OR_FOLLOWER,
                "this broker does not lead the partition".into(),
            ));
        }
        let hw = status.high_watermark;
        let offset = if offset == -1 { hw } else { offset };
        if offset < 0 || offset > hw {
            return Err((
                code::OFFSET_OUT_OF_RANGE,
                format!("offset {offset} is outside [0, high watermark {hw}]"),
            ));
        }
        // Producers whose every batch is gone are forgotten, as Kafka does; followers
        // move their start as the leader's reaches them in its Appends.
        match self.move_start(StartMove::To(offset as u64)).await {
            Ok(start) => {
                self.publish();
                tracing::info!(dir = %self.dir.display(), start, "log start moved (DeleteRecords)");
                Ok(Answer::LogStart(start as i64))
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "delete records failed");
                Err((code::KAFKA_STORAGE_ERROR, e.to_string()))
            }
        }
    }

    fn producer_infos(&self) -> Vec<ProducerInfo> {
        self.replica()
            .producers
            .iter()
            .filter_map(|(producer_id, p)| {
                Some(ProducerInfo {
                    producer_id,
                    epoch: p.epoch,
                    last_sequence: p.last_sequence()?,
                    last_timestamp: p.last_timestamp,
                })
            })
            .collect()
    }

    /// Carries out what the group asks for, through the replica driver: term and vote
    /// durable first, then truncations and appends with the epoch checkpoint, written,
    /// and one fdatasync started. The sync runs on while the task takes the next rounds
    /// (their appends are written meanwhile) and comes back to [`Self::synced`].
    async fn drive(&mut self) -> Result<(), DriveError> {
        let started = driver::drive(&mut self.node, &mut self.replicas, &mut self.io).await?;
        for s in started {
            self.start_sync(s);
        }
        Ok(())
    }

    fn start_sync(&mut self, s: Syncing<GlommioFile>) {
        // The driver starts one sync per group at a time, and this task has one group.
        debug_assert!(self.syncing.is_none(), "a second sync in flight");
        self.syncing = Some(glommio::spawn_local(async move {
            let outcome = s.point.wait().await;
            (s, outcome)
        }));
    }

    /// The sync in flight ended: the group learns what is durable (and starts the next
    /// sync if more was written), then is driven (a follower's acknowledgement goes out),
    /// and the produces it completed are answered.
    async fn synced(&mut self, s: Syncing<GlommioFile>, outcome: std::io::Result<()>) {
        let next =
            driver::synced(&mut self.node, &mut self.replicas, s, outcome, &mut self.io).await;
        let r = match next {
            Ok(next) => {
                next.into_iter().for_each(|n| self.start_sync(n));
                self.drive().await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.fail(e.storage());
        }
        self.publish();
        self.resolve_pending();
    }

    /// Drives the group with every sync awaited: at open and reopen, with nothing else to
    /// overlap.
    async fn drive_synced(&mut self) -> Result<(), DriveError> {
        driver::drive_synced(&mut self.node, &mut self.replicas, &mut self.io).await
    }

    fn replica(&self) -> &Replica<GlommioDisk> {
        &self.replicas[&self.membership.group]
    }

    fn replica_mut(&mut self) -> &mut Replica<GlommioDisk> {
        self.replicas
            .get_mut(&self.membership.group)
            .expect("the partition's group")
    }

    fn log(&self) -> &Log<GlommioDisk> {
        &self.replica().log
    }

    fn log_mut(&mut self) -> &mut Log<GlommioDisk> {
        &mut self
            .replicas
            .get_mut(&self.membership.group)
            .expect("the partition's group")
            .log
    }

    fn raft(&self) -> &Raft {
        self.node
            .group(self.membership.group)
            .expect("the partition's group")
    }

    fn raft_mut(&mut self) -> &mut Raft {
        self.node
            .group_mut(self.membership.group)
            .expect("the partition's group")
    }

    /// Makes the high watermark and the leadership visible to the shard and wakes long
    /// polls.
    fn publish(&mut self) {
        let mut s = self.status.get();
        let now = mono_ms();
        let raft = self.raft();
        let served = raft.read_high_watermark(now);
        let hw = served.unwrap_or(raft.commit()) as i64;
        let view = match raft.leader() {
            Some(l) if raft.role() == Role::Leader => View {
                leader: l as i32,
                epoch: raft.term() as i32,
                isr: raft
                    .in_sync(now, ISR_LAG_MS)
                    .into_iter()
                    .map(|n| n as i32)
                    .collect(),
            },
            Some(l) => View {
                leader: l as i32,
                epoch: raft.term() as i32,
                isr: {
                    let mut v = vec![l as i32, raft.id() as i32];
                    v.sort_unstable();
                    v
                },
            },
            None => View {
                leader: -1,
                epoch: -1,
                isr: Vec::new(),
            },
        };
        // Before a new high watermark is visible: batches of an older term (whose
        // uncommitted tail a newer leader may have replaced) must not be served under it.
        {
            let mut recent = self.recent.borrow_mut();
            if raft.role() != Role::Leader || recent.term() != raft.term() {
                recent.clear(raft.term());
            }
        }
        let log = self.log();
        s.size_bytes = log.size_bytes();
        let was_leader = s.is_leader;
        s.is_leader = served.is_some();
        if hw != s.high_watermark
            || s.log_start != log.log_start_offset() as i64
            || was_leader != s.is_leader
        {
            s.high_watermark = hw;
            s.log_start = log.log_start_offset() as i64;
            self.status.set(s);
            self.changed.notify(usize::MAX);
        } else {
            self.status.set(s);
        }
        if view != self.view {
            if self.replicated() {
                tracing::info!(dir = %self.dir.display(), leader = view.leader, epoch = view.epoch, isr = ?view.isr, "partition view");
            }
            if let Some(f) = &self.membership.on_view {
                f(self.membership.group, view.clone());
            }
            if view.leader >= 0 && view.epoch != self.view.epoch {
                crate::observe::leader_changed();
            }
            self.view = view;
        }
    }

    fn fail(&mut self, e: &StorageError) {
        if is_enospc(e) {
            // Not a failing device: what is committed is durable and still served; the
            // unwritten tail and the uncommitted entries are dropped by reopening the
            // dir once space is back (as a restart would, without one).
            if self.out_of_space.is_none() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "partition out of disk space: writes refused until space is back above the reserve");
                // No reading yet (u64::MAX): wait for nothing but the reserve.
                let free = crate::disk_space::free_bytes();
                self.out_of_space = Some(if free == u64::MAX { 0 } else { free });
            }
            return;
        }
        tracing::error!(dir = %self.dir.display(), error = %e, "partition storage failed; taking it offline");
        let mut s = self.status.get();
        s.online = false;
        self.status.set(s);
        self.changed.notify(usize::MAX);
    }

    /// After ENOSPC, with space back: reads the dir afresh (recovery keeps every synced
    /// batch and cuts a torn tail) and restarts the replication group from the saved term,
    /// exactly what a broker restart does for this partition. Stays out of space, to try
    /// again, if that fails.
    async fn reopen(&mut self) {
        match load(&self.dir, self.node_id, &self.settings, &self.membership).await {
            Ok(fresh) => {
                // The uncommitted tail is dropped with the old state.
                self.recent.borrow_mut().clear(0);
                let old = std::mem::replace(&mut self.replicas, fresh.replicas);
                self.node = fresh.node;
                // A sync of the old log proves nothing of the new one.
                self.syncing = None;
                // Its files only: nothing of its state may reach the disk any more.
                for (_, r) in old {
                    if let Err(e) = r.into_log().await.abandon().await {
                        tracing::debug!(dir = %self.dir.display(), error = %e, "closing the old log");
                    }
                }
                match self.drive_synced().await {
                    Ok(()) => {
                        self.out_of_space = None;
                        self.publish();
                        tracing::info!(dir = %self.dir.display(), end = self.log().next_offset(), "partition reopened after running out of disk space: writes resume");
                    }
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "reopening after ENOSPC")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "reopening after ENOSPC failed; retrying");
            }
        }
    }

    /// Every replica applies retention to its own log (as Kafka's do), over what is
    /// committed only; a follower that falls behind a leader's start starts again there.
    async fn retention(&mut self) {
        let before = self.log().segment_count();
        match self
            .move_start(StartMove::Retention { now_ms: wall_ms() })
            .await
        {
            Ok(start) => {
                let n = before.saturating_sub(self.log().segment_count());
                if n > 0 {
                    tracing::info!(dir = %self.dir.display(), segments = n, start, "retention deleted segments");
                    self.publish();
                }
            }
            Err(e) => tracing::warn!(dir = %self.dir.display(), error = %e, "retention failed"),
        }
    }

    /// Moves this replica's log start by the driver's rule (within what is committed and
    /// durable here); the storage error is returned as it came.
    async fn move_start(&mut self, how: StartMove) -> Result<u64, StorageError> {
        let group = self.membership.group;
        driver::move_start(&mut self.node, &mut self.replicas, group, how)
            .await
            .map_err(|e| match e {
                DriveError::Storage { source, .. } => source,
            })
    }

    async fn close(mut self) {
        // Syncs in flight are seen through first (their produces answered): the log's
        // file is closed after them.
        while let Some(t) = self.syncing.take() {
            let (s, outcome) = t.await;
            self.synced(s, outcome).await;
        }
        let Some(replica) = self.replicas.remove(&self.membership.group) else {
            return;
        };
        let mut log = replica.into_log().await;
        if self.out_of_space.is_some() {
            // Its in-memory tail is what reopening would have dropped: none of it may
            // reach the disk now.
            if let Err(e) = log.abandon().await {
                tracing::debug!(dir = %self.dir.display(), error = %e, "closing the log");
            }
            return;
        }
        if let Err(e) = log.sync().await {
            tracing::error!(dir = %self.dir.display(), error = %e, "final sync failed");
        }
        if let Err(e) = log.close().await {
            tracing::warn!(dir = %self.dir.display(), error = %e, "close failed");
        }
    }
}

/// Kafka's OffsetForLeaderEpoch answer from the term history `runs` ((term, first
/// offset), ascending) of a log ending at `end`: the largest epoch at or below `asked`,
/// and the offset where it ends (the next epoch's first offset, or the log end for the
/// newest); (-1, -1) when every epoch is above it.
fn epoch_end(runs: &[(u32, u64)], end: u64, asked: i32) -> (i32, i64) {
    let Some(i) = runs
        .iter()
        .rposition(|&(t, _)| i64::from(t) <= i64::from(asked))
    else {
        return (-1, -1);
    };
    let next = runs.get(i + 1).map_or(end, |&(_, start)| start);
    (runs[i].0 as i32, next as i64)
}

/// Each produced batch: where it lies in the request, its header, and the batch to store
/// instead when the topic's `compression.type` made the broker recompress it.
type Batches = Vec<(std::ops::Range<usize>, BatchHeader, Option<Vec<u8>>)>;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Splits a Produce partition's records into v2 batches and validates each before
/// anything is stored: framing, magic, CRC32C, record count, size; then every record
/// (records.rs) and its CreateTime against the topic's window around `now_ms`.
fn split_batches(
    records: Option<&[u8]>,
    settings: &TopicSettings,
    now_ms: i64,
) -> Result<Batches, (i16, String)> {
    let max_message_bytes = settings.max_message_bytes;
    let Some(bytes) = records else {
        return Err((code::CORRUPT_MESSAGE, "no records".into()));
    };
    if bytes.is_empty() {
        return Err((code::CORRUPT_MESSAGE, "empty record set".into()));
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 12 {
            return Err((code::CORRUPT_MESSAGE, "truncated batch header".into()));
        }
        let len = i32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
        let size = 12usize.saturating_add(len.max(0) as usize);
        if len < 0 || size > rest.len() {
            return Err((
                code::CORRUPT_MESSAGE,
                format!("batch length {len} runs past the {} bytes sent", rest.len()),
            ));
        }
        let h = batch::validate(&rest[..size], max_message_bytes).map_err(|e| {
            let error = match e {
                BatchError::TooLarge { .. } => code::MESSAGE_TOO_LARGE,
                BatchError::BadMagic(_) => code::UNSUPPORTED_FOR_MESSAGE_FORMAT,
                _ => code::CORRUPT_MESSAGE,
            };
            (error, e.to_string())
        })?;
        if h.is_control() || h.attributes & 0x10 != 0 {
            return Err((
                code::INVALID_RECORD,
                "transactional and control batches are not supported".into(),
            ));
        }
        let recompress = settings
            .compression
            .filter(|to| to.codec != h.compression());
        // What recompression may hold of one batch, decompressed: what may be stored when
        // it is stored uncompressed, else 32 times the limit (a producer's batch is
        // bounded by its own batch size, a bomb is not).
        let keep_limit = match recompress {
            Some(to) if to.codec == 0 => max_message_bytes,
            _ => max_message_bytes.saturating_mul(32),
        };
        let (walked, decompressed) = if recompress.is_some() {
            crate::records::validate_keeping(&rest[..size], &h, keep_limit)
                .map(|(w, k)| (w, Some(k)))
        } else {
            crate::records::validate(&rest[..size], &h).map(|w| (w, None))
        }
        .map_err(|e| (code::INVALID_RECORD, e.to_string()))?;
        for ts in [walked.min_timestamp, walked.max_timestamp] {
            // -1 is "no timestamp" (old clients); the window is Kafka's, both sides.
            if ts != -1
                && (ts.saturating_sub(now_ms) > settings.timestamp_after_max_ms
                    || now_ms.saturating_sub(ts) > settings.timestamp_before_max_ms)
            {
                return Err((
                    code::INVALID_TIMESTAMP,
                    format!(
                        "timestamp {ts} is outside the window [now - {} ms, now + {} ms] (message.timestamp.before/after.max.ms)",
                        settings.timestamp_before_max_ms, settings.timestamp_after_max_ms
                    ),
                ));
            }
        }
        let rebuilt = match recompress {
            None => None,
            Some(to) => {
                let plain = match &decompressed {
                    Some(Kept::TooLarge) | None => {
                        return Err((
                            code::MESSAGE_TOO_LARGE,
                            format!(
                                "the batch decompresses to more than {keep_limit} bytes, more than compression.type lets the broker recompress (max.message.bytes {max_message_bytes})"
                            ),
                        ));
                    }
                    Some(kept) => kept.records_or(&rest[..size]),
                };
                let b = if to.codec == 0 {
                    batch::rewrap(&rest[..size], 0, plain)
                } else {
                    let records = crate::records::compress(to, plain)
                        .map_err(|e| (code::UNKNOWN_SERVER_ERROR, format!("recompressing: {e}")))?;
                    batch::rewrap(&rest[..size], to.codec, &records)
                };
                // Kafka checks the batch it stores, not the one it was sent.
                if b.len() > max_message_bytes {
                    return Err((
                        code::MESSAGE_TOO_LARGE,
                        format!(
                            "the batch is {} bytes once recompressed for compression.type, over max.message.bytes {max_message_bytes}",
                            b.len()
                        ),
                    ));
                }
                Some(b)
            }
        };
        out.push((at..at + size, h, rebuilt));
        at += size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corelog_storage::batch::build;

    fn limits(max_message_bytes: usize) -> TopicSettings {
        let mut t =
            crate::config::topic_settings(&crate::config::Config::default(), &BTreeMap::new());
        t.max_message_bytes = max_message_bytes;
        t
    }

    fn split(records: Option<&[u8]>, max: usize) -> Result<Batches, (i16, String)> {
        split_batches(records, &limits(max), 1_700_000_000_000)
    }

    #[test]
    fn epoch_ends_follow_kafka() {
        let runs = [(1, 0), (3, 10), (4, 25)];
        assert_eq!(epoch_end(&runs, 40, 4), (4, 40));
        assert_eq!(epoch_end(&runs, 40, 3), (3, 25));
        // An epoch this log never had: the largest below it, ending where the next begins.
        assert_eq!(epoch_end(&runs, 40, 2), (1, 10));
        assert_eq!(epoch_end(&runs, 40, 9), (4, 40));
        assert_eq!(epoch_end(&runs, 40, 0), (-1, -1));
        assert_eq!(epoch_end(&[], 0, 5), (-1, -1));
    }

    #[test]
    fn split_refuses_bad_records_and_timestamps() {
        // A record whose key length runs past the record, CRC recomputed: it would have
        // been stored and poisoned every consumer.
        let now = 1_700_000_000_000;
        let mut b = build::batch(&[b"value"], now);
        // Record body starts at 61: len, attrs, tsDelta, offDelta, keyLen(-1 = 0x01)...
        b[65] = 0x7e; // key length 63
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            split(Some(&b), 1 << 20).unwrap_err().0,
            code::INVALID_RECORD
        );
        // A CreateTime two hours ahead is refused; one a minute ahead is not.
        let ahead = build::batch(&[b"v"], now + 2 * 3_600_000);
        assert_eq!(
            split_batches(Some(&ahead), &limits(1 << 20), now)
                .unwrap_err()
                .0,
            code::INVALID_TIMESTAMP
        );
        let fine = build::batch(&[b"v"], now + 60_000);
        assert!(split_batches(Some(&fine), &limits(1 << 20), now).is_ok());
    }

    #[test]
    fn split_refuses_bad_framing_with_kafka_codes() {
        let good = build::batch(&[b"x"], 0);
        assert_eq!(split(Some(&good), 1 << 20).unwrap().len(), 1);
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert_eq!(split(Some(&two), 1 << 20).unwrap().len(), 2);
        assert_eq!(
            split(Some(&good), 10).unwrap_err().0,
            code::MESSAGE_TOO_LARGE
        );
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            split(Some(&bad), 1 << 20).unwrap_err().0,
            code::CORRUPT_MESSAGE
        );
        assert_eq!(
            split(Some(&good[..good.len() - 3]), 1 << 20).unwrap_err().0,
            code::CORRUPT_MESSAGE
        );
        assert_eq!(split(None, 1 << 20).unwrap_err().0, code::CORRUPT_MESSAGE);
    }

    /// A partition dir from before the replica driver (term, vote and term history in
    /// raft-state.json) keeps its term: the JSON is carried into the driver's files and
    /// removed, and the group's next election is above the old term.
    #[test]
    fn an_old_raft_state_json_is_carried_over() {
        let dir = tempfile::Builder::new()
            .prefix("corelog-partition-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let path = dir.path().join("t-0");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(
            path.join(RAFT_FILE),
            br#"{"term":7,"voted_for":1,"epochs":[[7,0]]}"#,
        )
        .unwrap();
        let p = path.clone();
        let epoch = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let h = open(
                    p,
                    1,
                    limits(1 << 20),
                    Duration::from_secs(3600),
                    Membership::solo(1),
                )
                .await
                .unwrap();
                let (tx, rx) = oneshot::channel();
                let b = build::batch(&[b"x"], wall_ms());
                h.send(Cmd::Produce {
                    records: Some(Bytes::from(b)),
                    acks: -1,
                    reply: tx,
                })
                .await;
                let out = rx.await.unwrap();
                assert_eq!(out.error, code::NONE, "{:?}", out.message);
                let (tx, rx) = oneshot::channel();
                h.send(Cmd::Fetch {
                    offset: out.base_offset,
                    max_bytes: 1 << 20,
                    reply: tx,
                })
                .await;
                let fetched = rx.await.unwrap();
                let (tx, rx) = oneshot::channel();
                h.send(Cmd::Close(tx)).await;
                rx.await.unwrap();
                BatchHeader::parse(&fetched.records.to_bytes())
                    .unwrap()
                    .partition_leader_epoch
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(
            epoch > 7,
            "the group restarted below its old term: epoch {epoch}"
        );
        assert!(!path.join(RAFT_FILE).exists());
        assert!(path.join(driver::HARD_STATE_FILE).exists());
    }
}
