//! The controller group on a clustered broker: group 0 over every voter, run by the
//! replica driver like a partition, on shard 0. Its committed log is the cluster's
//! metadata (`corelog_replication::controller`): every broker applies it in order and
//! hands the result to its shards, which open the partitions it holds replicas of and
//! answer Metadata from it.
//!
//! Proposals are made by the controller leader only (the broker's admin operations on
//! any other broker answer NOT_CONTROLLER, which Kafka's admin clients follow to the
//! controller Metadata names). Broker registration needs no client: every broker
//! announces its Kafka address in its RPC hello, and the leader registers each address
//! it learns (and its own) that the metadata does not hold yet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use corelog_replication::controller::{
    CONTROLLER_GROUP, ClusterMetadata, MetadataCommand, MetadataError, encode_command,
};
use corelog_replication::driver::{self, Replica, read_checked};
use corelog_replication::{
    Envelope, GroupId, Message, Node, NodeId, Offset, Raft, RaftConfig, Role, Term,
};
use corelog_storage::batch::BatchHeader;
use corelog_storage::{GlommioDisk, LogConfig};
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};

use super::RpcIo;
use super::transport::{Hello, Peers};
use crate::errors as code;
use crate::util::{mono_ms, wall_ms};

pub enum CtlCmd {
    /// Replication messages of group 0 from a peer.
    Raft { from: NodeId, items: Vec<Message> },
    /// A metadata change, answered once applied here (or refused).
    Propose {
        cmd: MetadataCommand,
        reply: oneshot::Sender<Result<(), (i16, String)>>,
    },
    /// A peer's Kafka address, from its RPC hello.
    Hello(Hello),
}

/// Told after every change of the applied metadata or of the controller leader.
pub type OnChange = Rc<dyn Fn(Rc<ClusterMetadata>, Option<NodeId>)>;

#[derive(Clone)]
pub struct ControllerHandle {
    tx: mpsc::Sender<CtlCmd>,
    /// The one sender `offer` uses, so the queue's bound holds (see PartitionHandle).
    offer_tx: Rc<std::cell::RefCell<mpsc::Sender<CtlCmd>>>,
}

impl ControllerHandle {
    /// Queues without waiting (replication messages and hellos: droppable).
    pub fn offer(&self, cmd: CtlCmd) {
        let _ = self.offer_tx.borrow_mut().try_send(cmd);
    }

    /// Proposes `cmd` and waits until it is applied on this broker.
    pub async fn propose(&self, cmd: MetadataCommand) -> Result<(), (i16, String)> {
        let (reply, rx) = oneshot::channel();
        let mut tx = self.tx.clone();
        if futures::SinkExt::send(&mut tx, CtlCmd::Propose { cmd, reply })
            .await
            .is_err()
        {
            return Err((code::NOT_CONTROLLER, "the controller stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err((code::NOT_CONTROLLER, "the controller stopped".into())))
    }
}

const QUEUE: usize = 1024;
/// A proposal not applied within this long is answered with REQUEST_TIMED_OUT.
const PROPOSE_TIMEOUT_MS: u64 = 15_000;
/// How often the leader retries a broker registration that has not applied yet.
const REGISTER_RETRY_MS: u64 = 2_000;

struct Pending {
    base: Offset,
    end: Offset,
    term: Term,
    deadline_ms: u64,
    reply: oneshot::Sender<Result<(), (i16, String)>>,
}

struct Task {
    node: Node,
    replicas: BTreeMap<GroupId, Replica<GlommioDisk>>,
    io: RpcIo,
    meta: ClusterMetadata,
    /// Apply results of recent batches by end offset, for their proposers.
    results: BTreeMap<Offset, Result<(), MetadataError>>,
    pending: Vec<Pending>,
    /// Kafka addresses heard of (this broker's own too), to register.
    addresses: BTreeMap<NodeId, (String, u16)>,
    registering: BTreeMap<NodeId, u64>,
    on_change: OnChange,
    leader: Option<NodeId>,
    offsets_proposed: Option<u64>,
}

fn log_config() -> LogConfig {
    LogConfig {
        // Metadata is small and must never expire.
        segment_bytes: 16 << 20,
        segment_ms: None,
        retention_ms: None,
        retention_bytes: None,
        preallocate: false,
        ..LogConfig::default()
    }
}

/// Opens the controller's replica in `dir` and starts its task on this shard.
pub async fn start(
    dir: PathBuf,
    me: NodeId,
    voters: Vec<NodeId>,
    peers: Rc<Peers>,
    kafka: (String, u16),
    on_change: OnChange,
) -> Result<ControllerHandle, String> {
    let at = |e: &dyn std::fmt::Display| format!("controller {}: {e}", dir.display());
    let disk = GlommioDisk::open_dir(&dir).await.map_err(|e| at(&e))?;
    let (replica, recovered) = Replica::open(disk, log_config(), |_, _| {})
        .await
        .map_err(|e| at(&e))?;
    let now = mono_ms();
    let mut raft = Raft::new(
        RaftConfig::new(me, voters, u64::from(me) ^ now),
        recovered.hard,
        recovered.log,
        now,
    );
    if let Some(d) = &recovered.damaged {
        tracing::error!(dir = %dir.display(), "controller log damaged: {d}");
        raft.on_storage_corrupt(now);
    }
    let mut node = Node::new(me);
    node.add_group(CONTROLLER_GROUP, raft);
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut task = Task {
        node,
        replicas: BTreeMap::from([(CONTROLLER_GROUP, replica)]),
        io: RpcIo { peers: Some(peers) },
        meta: ClusterMetadata::default(),
        results: BTreeMap::new(),
        pending: Vec::new(),
        addresses: BTreeMap::from([(me, kafka)]),
        registering: BTreeMap::new(),
        on_change,
        leader: None,
        offsets_proposed: None,
    };
    // What this broker committed before it stopped is applied before it serves: a
    // restarted broker knows its topics (and opens its partitions) at once.
    task.apply().await?;
    (task.on_change)(Rc::new(task.meta.clone()), None);
    glommio::spawn_local(task.run(rx)).detach();
    Ok(ControllerHandle {
        offer_tx: Rc::new(std::cell::RefCell::new(tx.clone())),
        tx,
    })
}

impl Task {
    fn raft(&self) -> &Raft {
        self.node
            .group(CONTROLLER_GROUP)
            .expect("the controller group")
    }

    async fn run(mut self, mut rx: mpsc::Receiver<CtlCmd>) {
        loop {
            let wait = self
                .node
                .next_deadline()
                .saturating_sub(mono_ms())
                .min(if self.pending.is_empty() { 1000 } else { 100 });
            let first = futures_lite::future::or(async { Some(rx.next().await) }, async {
                glommio::timer::sleep(Duration::from_millis(wait)).await;
                None
            })
            .await;
            let mut cmds = Vec::new();
            match first {
                Some(Some(c)) => cmds.push(c),
                Some(None) => return,
                None => {}
            }
            while cmds.len() < QUEUE {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            for c in cmds {
                self.handle(c);
            }
            self.register_brokers();
            self.node.on_tick(mono_ms());
            if let Err(e) =
                driver::drive_synced(&mut self.node, &mut self.replicas, &mut self.io).await
            {
                // A controller replica whose disk fails stops taking part, as a
                // partition's does; the others carry the metadata on.
                tracing::error!(error = %e, "controller storage failed; this broker leaves the controller group");
                for p in self.pending.drain(..) {
                    let _ = p
                        .reply
                        .send(Err((code::KAFKA_STORAGE_ERROR, e.to_string())));
                }
                return;
            }
            if let Err(e) = self.apply().await {
                tracing::error!("{e}");
            }
            let leader = self.raft().leader();
            if leader != self.leader {
                self.leader = leader;
                tracing::info!(leader = ?leader, term = self.raft().term(), "controller leader");
                (self.on_change)(Rc::new(self.meta.clone()), leader);
            }
            self.answer();
        }
    }

    fn handle(&mut self, c: CtlCmd) {
        let now = mono_ms();
        match c {
            CtlCmd::Raft { from, items } => self.node.on_envelope(
                now,
                Envelope {
                    from,
                    items: items.into_iter().map(|m| (CONTROLLER_GROUP, m)).collect(),
                    claims: None,
                    proposals: Vec::new(),
                },
            ),
            CtlCmd::Hello(h) => {
                self.addresses.insert(h.node, (h.host, h.port));
            }
            CtlCmd::Propose { cmd, reply } => {
                let term = self.raft().term();
                let leader = self.raft().leader();
                let raft = self
                    .node
                    .group_mut(CONTROLLER_GROUP)
                    .expect("the controller group");
                if raft.role() != Role::Leader {
                    let _ = reply.send(Err((
                        code::NOT_CONTROLLER,
                        format!("this broker is not the controller (leader: {leader:?})"),
                    )));
                    return;
                }
                match raft.propose(now, encode_command(&cmd, wall_ms())) {
                    Ok((base, end)) => self.pending.push(Pending {
                        base,
                        end,
                        term,
                        deadline_ms: now + PROPOSE_TIMEOUT_MS,
                        reply,
                    }),
                    Err(e) => {
                        let _ = reply.send(Err((
                            code::NOT_CONTROLLER,
                            format!("the controller refused the change: {e:?}"),
                        )));
                    }
                }
            }
        }
    }

    /// As leader: registers every broker whose Kafka address the metadata lacks.
    fn register_brokers(&mut self) {
        if self.raft().role() != Role::Leader {
            return;
        }
        let now = mono_ms();
        let todo: Vec<(NodeId, String, u16)> = self
            .addresses
            .iter()
            .filter(|(id, (h, p))| {
                self.meta
                    .brokers
                    .get(id)
                    .is_none_or(|b| (&b.host, b.port) != (h, *p))
            })
            .filter(|(id, _)| {
                self.registering
                    .get(id)
                    .is_none_or(|t| now >= t + REGISTER_RETRY_MS)
            })
            .map(|(id, (h, p))| (*id, h.clone(), *p))
            .collect();
        self.create_offsets_topic(now);
        for (id, host, port) in todo {
            let cmd = MetadataCommand::RegisterBroker { id, host, port };
            let raft = self
                .node
                .group_mut(CONTROLLER_GROUP)
                .expect("the controller group");
            if raft.propose(now, encode_command(&cmd, wall_ms())).is_ok() {
                tracing::info!(broker = id, "registering broker");
                self.registering.insert(id, now);
            }
        }
    }

    /// As leader: creates the consumer-offsets topic once min(3, voters) brokers are
    /// registered, with that many replicas per partition.
    fn create_offsets_topic(&mut self, now: u64) {
        use crate::group::{OFFSETS_PARTITIONS, OFFSETS_TOPIC};
        if self.meta.topics.contains_key(OFFSETS_TOPIC)
            || self
                .offsets_proposed
                .is_some_and(|t| now < t + REGISTER_RETRY_MS)
        {
            return;
        }
        let rf = self.raft().voters().len().min(3);
        let brokers: Vec<NodeId> = self.meta.brokers.keys().copied().collect();
        if brokers.len() < rf {
            return;
        }
        let Ok(partitions) = corelog_replication::controller::assign_replicas(
            &brokers,
            OFFSETS_PARTITIONS as u32,
            rf as u32,
            0,
        ) else {
            return;
        };
        let cmd = MetadataCommand::CreateTopic {
            name: OFFSETS_TOPIC.to_string(),
            id: crate::topics::random_topic_id(),
            partitions,
            configs: Vec::new(),
        };
        let raft = self
            .node
            .group_mut(CONTROLLER_GROUP)
            .expect("the controller group");
        if raft.propose(now, encode_command(&cmd, wall_ms())).is_ok() {
            tracing::info!(
                replication_factor = rf,
                "creating the consumer offsets topic"
            );
            self.offsets_proposed = Some(now);
        }
    }

    /// Applies what committed since the last call.
    async fn apply(&mut self) -> Result<(), String> {
        let commit = self.raft().commit();
        let before = self.meta.applied;
        while self.meta.applied < commit {
            let log = &self.replicas[&CONTROLLER_GROUP].log;
            let got = match read_checked(log, self.meta.applied, 1 << 20, commit).await {
                Ok(got) => got,
                Err(f) => {
                    if f.corrupt_on_disk {
                        if let Some(r) = self.node.group_mut(CONTROLLER_GROUP) {
                            r.on_storage_corrupt(mono_ms());
                        }
                    }
                    return Err(format!("controller log read: {}", f.error));
                }
            };
            if got.bytes.is_empty() {
                break;
            }
            let mut rest = &got.bytes[..];
            while let Ok(h) = BatchHeader::parse(rest) {
                if h.size > rest.len() {
                    break;
                }
                let end = h.last_offset() as u64 + 1;
                if end > self.meta.applied {
                    let r = self.meta.apply_batch(&rest[..h.size], end);
                    if let Err(e) = &r {
                        tracing::debug!(
                            offset = h.base_offset,
                            "metadata command not applied: {e}"
                        );
                    }
                    self.results.insert(end, r);
                }
                rest = &rest[h.size..];
            }
        }
        if self.meta.applied != before {
            let leader = self.raft().leader();
            (self.on_change)(Rc::new(self.meta.clone()), leader);
        }
        Ok(())
    }

    fn answer(&mut self) {
        let now = mono_ms();
        let applied = self.meta.applied;
        let term = self.raft().term();
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            let ours = self.raft().epochs().term_at(p.base) == p.term;
            let result = if applied >= p.end && ours {
                match self.results.get(&p.end) {
                    Some(Ok(())) => Ok(()),
                    Some(Err(e)) => Err(map_error(e)),
                    None => Ok(()),
                }
            } else if !ours || term != p.term {
                Err((
                    code::NOT_CONTROLLER,
                    "the controller changed before the change committed; retry".into(),
                ))
            } else if now >= p.deadline_ms {
                Err((
                    code::REQUEST_TIMED_OUT,
                    "the metadata change did not commit in time".into(),
                ))
            } else {
                self.pending.push(p);
                continue;
            };
            let _ = p.reply.send(result);
        }
        // Results are kept only while a proposer may still ask for them.
        let oldest = self
            .pending
            .iter()
            .map(|p| p.end)
            .min()
            .unwrap_or(applied + 1);
        self.results = self.results.split_off(&oldest.min(applied + 1));
    }
}

fn map_error(e: &MetadataError) -> (i16, String) {
    let c = match e {
        MetadataError::TopicExists(_) => code::TOPIC_ALREADY_EXISTS,
        MetadataError::UnknownTopic(_) => code::UNKNOWN_TOPIC_OR_PARTITION,
        MetadataError::InvalidTopicName(_) => code::INVALID_TOPIC_EXCEPTION,
        MetadataError::UnknownBroker(_) | MetadataError::InvalidAssignment(_) => {
            code::INVALID_REPLICA_ASSIGNMENT
        }
        MetadataError::Malformed(_) => code::UNKNOWN_SERVER_ERROR,
        MetadataError::Security(_) => code::RESOURCE_NOT_FOUND,
    };
    (c, e.to_string())
}
