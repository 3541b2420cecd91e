//! One shard: an executor pinned to a core, owning some partitions, holding a copy of the
//! topic metadata, and talking to the other shards over glommio's channel mesh. A request
//! for a partition another shard owns is forwarded there and answered through a oneshot;
//! nothing is shared between shards but these messages, so nothing takes a lock.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;

use crate::cluster::ClusterCtx;
use crate::cluster::controller::ControllerHandle;
use crate::cluster::transport::Hello;
use crate::config::{Config, topic_settings};
use crate::errors as code;
use crate::partition::{
    self, Answer, Cmd, FetchOutcome, Membership, PartitionHandle, ProduceOutcome, Query, View,
};
use crate::topic_configs::validate as validate_topic_config;
use crate::topics::{
    MetaFile, TopicMeta, owner_shard, partition_dir, random_topic_id, validate_topic_name,
};
use corelog_replication::controller::ClusterMetadata;
use corelog_replication::security::{SecurityCommand, SecurityMetadata};
use corelog_replication::{GroupId, Message, NodeId};

/// Messages between shards. Everything in them is `Send`. A request carries the oneshot
/// its sender awaits; the serving shard never completes it itself but sends a `Deliver`
/// back, which completes it on the sender's own thread. (glommio does not unpark an
/// executor sleeping in io_uring when one of its tasks is woken from another thread, so a
/// oneshot completed remotely is noticed only at that executor's next timer, up to 100 ms
/// later; a mesh message wakes it at once.)
pub enum ShardMsg {
    /// Runs on the receiving shard: completes (or drops) the reply of a request it sent.
    Deliver(Box<dyn FnOnce() + Send>),
    Produce {
        topic: String,
        partition: i32,
        records: Option<Bytes>,
        acks: i16,
        reply: oneshot::Sender<ProduceOutcome>,
    },
    /// Replication messages from peer broker `from` for `group`, which this shard owns.
    Raft {
        from: NodeId,
        group: GroupId,
        items: Vec<Message>,
    },
    /// To shard 0: a peer broker connected and said who it is.
    Hello(Hello),
    /// To shard 0: controller proposals a peer forwarded to this broker.
    Proposals { from: NodeId, batches: Vec<Bytes> },
    /// A partition's leader, epoch and ISR as its replica on this broker sees them.
    View {
        topic: String,
        partition: i32,
        view: View,
    },
    /// A peer's announcement of the groups it leads, relayed by the shard that read it.
    Claims {
        from: NodeId,
        claims: Vec<corelog_replication::LeaderClaim>,
    },
    /// From shard 0: the registered brokers and the controller leader.
    Cluster {
        brokers: BTreeMap<NodeId, (String, u16)>,
        controller: Option<NodeId>,
        cluster_id: String,
    },
    Fetch {
        topic: String,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        reply: oneshot::Sender<FetchOutcome>,
    },
    /// Answer once the partition's high watermark passes `offset`, or after `wait_ms`.
    Wait {
        topic: String,
        partition: i32,
        offset: i64,
        wait_ms: u64,
        reply: oneshot::Sender<()>,
    },
    /// A question for a partition (ListOffsets, DeleteRecords, DescribeProducers).
    Query {
        topic: String,
        partition: i32,
        query: Query,
        reply: oneshot::Sender<Result<Answer, (i16, String)>>,
    },
    /// From shard 0: a topic was created or its config changed.
    TopicUpsert {
        meta: TopicMeta,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// From shard 0: a topic was deleted (`from` 0), or partitions `from..` of it were
    /// rolled back; close and remove them.
    TopicRemove {
        meta: TopicMeta,
        from: i32,
        reply: oneshot::Sender<()>,
    },
    /// To the shard that owns a consumer group.
    Group {
        op: crate::coordinator::GroupOp,
        reply: oneshot::Sender<crate::coordinator::GroupReply>,
    },
    /// From shard 0: users and ACLs changed; the whole new set.
    Security(SecurityMetadata),
    /// From shard 0's metrics listener: this shard's counters and partitions.
    Observe(oneshot::Sender<crate::observe::Snapshot>),
    /// To shard 0, the only writer of cluster metadata.
    Admin {
        op: AdminOp,
        reply: oneshot::Sender<AdminResult>,
    },
}

pub enum AdminOp {
    CreateTopic {
        name: String,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    },
    DeleteTopic {
        name: String,
    },
    /// Replace a topic's overrides with `configs`.
    SetConfigs {
        name: String,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    },
    /// Grow a topic to `count` partitions (CreatePartitions).
    AddPartitions {
        name: String,
        count: i32,
        validate_only: bool,
    },
    AllocProducerId,
    /// A change of users or ACLs, checked by the handler that asks.
    Security(SecurityCommand),
}

#[derive(Debug, Clone)]
pub enum AdminResult {
    Ok(Option<TopicMeta>),
    ProducerId(i64),
    Err(i16, String),
}

/// Shard 0's writable metadata and producer-id allocator.
struct Controller {
    meta: MetaFile,
    next_producer_id: i64,
}

pub struct Shard {
    /// Mesh peer id, 0-based (glommio executor ids start at 1: never mixed).
    pub id: usize,
    pub count: usize,
    pub cfg: Rc<Config>,
    /// Kafka's cluster id: the data dir's on a single-node broker, the controller log's
    /// on a cluster (empty until its first batch is applied).
    pub cluster_id: RefCell<String>,
    pub topics: RefCell<BTreeMap<String, TopicMeta>>,
    pub(crate) partitions: RefCell<HashMap<(String, i32), PartitionHandle>>,
    senders: Senders<ShardMsg>,
    controller: RefCell<Option<Controller>>,
    pub connections: Cell<usize>,
    /// Request bytes being read or awaiting their answer on this shard (see limits.rs).
    pub request_budget: crate::limits::Budget,
    /// Set when SIGTERM/SIGINT arrived; `shutdown` wakes whoever waits for it.
    pub stopping: Cell<bool>,
    pub shutdown: event_listener::Event,
    /// Consumer groups this shard coordinates (see `coordinator.rs`).
    pub groups: RefCell<BTreeMap<String, crate::group::Group>>,
    /// Offset commits written but not yet applied to `groups`; compaction waits for none.
    pub commits_in_flight: Cell<usize>,
    /// Per offsets partition: size at which it is compacted next.
    pub compact_at: RefCell<BTreeMap<i32, u64>>,
    /// On a cluster: the transport and voters; None on a single-node broker.
    pub cluster: Option<Rc<ClusterCtx>>,
    /// Group id -> partition, for routing replication messages (every shard's copy).
    pub(crate) routes: RefCell<HashMap<GroupId, (String, i32)>>,
    /// Leader, epoch and ISR of the partitions this broker holds replicas of.
    pub views: Rc<RefCell<HashMap<(String, i32), View>>>,
    /// Views changed by this shard's partitions, to tell the other shards.
    pub(crate) view_outbox: Rc<RefCell<Vec<(String, i32, View)>>>,
    pub(crate) view_ready: Rc<event_listener::Event>,
    /// Peers' announcements of the groups they lead, and when each was last heard.
    pub(crate) claims: RefCell<crate::cluster::claims::Claims>,
    /// Shard 0: a view changed, announce at once.
    pub(crate) claims_due: Rc<event_listener::Event>,
    /// Registered brokers (id -> Kafka host, port) and the controller leader.
    pub brokers: RefCell<BTreeMap<NodeId, (String, u16)>>,
    pub controller_leader: Cell<Option<NodeId>>,
    /// Shard 0 of a clustered broker: the controller group.
    pub(crate) ctl: RefCell<Option<ControllerHandle>>,
    /// Shard 0: the newest applied metadata not reconciled yet, and whether a
    /// reconciliation runs.
    pub(crate) latest_meta: RefCell<Option<(Rc<ClusterMetadata>, Option<NodeId>)>>,
    pub(crate) reconciling: Cell<bool>,
    /// On a cluster: the offsets topic from the controller (kept apart from `topics`:
    /// clients neither see nor write it).
    pub(crate) internal: RefCell<Option<TopicMeta>>,
    /// On a cluster: the offsets partitions whose groups this shard coordinates.
    pub(crate) coordinating: RefCell<HashMap<i32, crate::cluster::groups::Coordinating>>,
    /// Shard 0: peers' hellos that arrived before the controller started.
    pub(crate) early_hellos: RefCell<Vec<Hello>>,
    /// Numbers the offsets loads of `coordinating` (a finished load counts only if it is
    /// still the current one).
    pub(crate) next_load: Cell<u64>,
    /// The SASL users of the config (derived once, for every shard).
    pub(crate) config_users: Arc<crate::sasl::Users>,
    /// Users and ACLs as this shard knows them (security.rs), swapped whole.
    pub(crate) security: RefCell<Rc<crate::security::Security>>,
}

const PRODUCER_ID_BLOCK: i64 = 1000;

/// What CreateTopics checks of a new topic on a single node and a cluster alike: Kafka's
/// name rules, the reserved offsets topic, the partition count, every config.
pub(crate) fn check_new_topic(
    name: &str,
    partitions: i32,
    configs: &BTreeMap<String, String>,
) -> Result<(), (i16, String)> {
    validate_topic_name(name).map_err(|e| (code::INVALID_TOPIC_EXCEPTION, e))?;
    if name == crate::group::OFFSETS_TOPIC {
        return Err((
            code::INVALID_TOPIC_EXCEPTION,
            format!("'{name}' is reserved for committed offsets"),
        ));
    }
    if !(1..=100_000).contains(&partitions) {
        return Err((
            code::INVALID_PARTITIONS,
            format!("number of partitions must be between 1 and 100000, not {partitions}"),
        ));
    }
    for (k, v) in configs {
        validate_topic_config(k, v).map_err(|e| (code::INVALID_CONFIG, e))?;
    }
    Ok(())
}

impl Shard {
    /// Loads the metadata and opens the partitions this shard owns.
    pub async fn start(
        cfg: Rc<Config>,
        senders: Senders<ShardMsg>,
        cluster: Option<Rc<ClusterCtx>>,
        config_users: Arc<crate::sasl::Users>,
    ) -> Result<Rc<Self>, String> {
        let id = senders.peer_id();
        let count = senders.nr_consumers();
        let meta = MetaFile::load_or_create(&cfg.data_dir)
            .map_err(|e| format!("metadata in {}: {e}", cfg.data_dir.display()))?;
        let controller = (id == 0).then(|| Controller {
            next_producer_id: meta.producer_id_reserved,
            meta: meta.clone(),
        });
        let cluster_id = match &cluster {
            Some(_) => String::new(),
            None => meta.cluster_id.clone(),
        };
        // A cluster member's users and ACLs come from the controller; until they do it
        // admits only super users (fail closed).
        let security = match &cluster {
            Some(_) => crate::security::Security::new(
                &cfg,
                &config_users,
                SecurityMetadata::default(),
                true,
            ),
            None => {
                crate::security::Security::new(&cfg, &config_users, meta.security.clone(), false)
            }
        };
        let shard = Rc::new(Self {
            id,
            count,
            cluster_id: RefCell::new(cluster_id),
            topics: RefCell::new(BTreeMap::new()),
            partitions: RefCell::new(HashMap::new()),
            senders,
            controller: RefCell::new(controller),
            connections: Cell::new(0),
            request_budget: crate::limits::Budget::new(
                cfg.shard_request_budget(count),
                cfg.max_request_bytes as u64,
            ),
            stopping: Cell::new(false),
            shutdown: event_listener::Event::new(),
            groups: RefCell::new(BTreeMap::new()),
            commits_in_flight: Cell::new(0),
            compact_at: RefCell::new(BTreeMap::new()),
            cfg,
            cluster,
            routes: RefCell::new(HashMap::new()),
            views: Rc::new(RefCell::new(HashMap::new())),
            view_outbox: Rc::new(RefCell::new(Vec::new())),
            view_ready: Rc::new(event_listener::Event::new()),
            claims: RefCell::new(Default::default()),
            claims_due: Rc::new(event_listener::Event::new()),
            brokers: RefCell::new(BTreeMap::new()),
            controller_leader: Cell::new(None),
            ctl: RefCell::new(None),
            latest_meta: RefCell::new(None),
            reconciling: Cell::new(false),
            internal: RefCell::new(None),
            coordinating: RefCell::new(HashMap::new()),
            early_hellos: RefCell::new(Vec::new()),
            next_load: Cell::new(0),
            config_users,
            security: RefCell::new(Rc::new(security)),
        });
        // A cluster's topics come from the controller's log, not the local file.
        if shard.cluster.is_none() {
            for t in meta.topics.values() {
                shard.apply_upsert(t.clone()).await?;
            }
        }
        if shard.cluster.is_none() {
            // On a cluster the offsets partitions come with the metadata, and a replica
            // loads its groups when it becomes leader.
            shard.load_offsets().await?;
        }
        Ok(shard)
    }

    /// Resolves once shutdown has begun.
    pub async fn stopped(&self) {
        loop {
            let l = self.shutdown.listen();
            if self.stopping.get() {
                return;
            }
            l.await;
        }
    }

    fn data_dir(&self, topic: &str, partition: i32) -> PathBuf {
        partition_dir(&self.cfg.data_dir, topic, partition)
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.topics.borrow().get(name).cloned()
    }

    pub(crate) fn handle(&self, topic: &str, partition: i32) -> Option<PartitionHandle> {
        self.partitions
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Opens a partition of an internal topic (not in the topic metadata, so clients can
    /// neither see nor write it) on this shard.
    pub async fn open_internal_partition(
        &self,
        topic: &str,
        p: i32,
    ) -> Result<PartitionHandle, String> {
        let h = partition::open(
            self.data_dir(topic, p),
            self.cfg.node_id,
            topic_settings(&self.cfg, &self.offsets_overrides()),
            Duration::from_millis(self.cfg.retention_check_interval_ms.max(100)),
            Membership::solo(self.cfg.node_id),
        )
        .await?;
        self.partitions
            .borrow_mut()
            .insert((topic.to_string(), p), h.clone());
        Ok(h)
    }

    /// The config of the offsets topic: offsets must outlive any retention (the latest
    /// commit of a group may be old); compaction (coordinator.rs) drops whole segments, so
    /// they are kept a fraction of its threshold.
    pub(crate) fn offsets_overrides(&self) -> BTreeMap<String, String> {
        let mut overrides = BTreeMap::new();
        overrides.insert("retention.ms".to_string(), "-1".to_string());
        let segment = (self.cfg.offsets_compact_bytes / 4).clamp(16 * 1024, 1 << 30);
        overrides.insert("segment.bytes".to_string(), segment.to_string());
        overrides
    }

    /// Hands the answer to a request from shard `from` back to it over the mesh, to be
    /// completed on `from`'s thread (see `ShardMsg`); an abandoned request is dropped there
    /// too, so its waiter wakes at once either way.
    async fn reply_to<T: Send + 'static>(
        &self,
        from: usize,
        answer: Option<T>,
        reply: oneshot::Sender<T>,
    ) {
        let deliver = Box::new(move || {
            if let Some(v) = answer {
                let _ = reply.send(v);
            }
        });
        self.forward(from, ShardMsg::Deliver(deliver)).await;
    }

    /// Serves a forwarded partition operation with a local oneshot, then replies to `from`.
    async fn relay<T: Send + 'static>(
        &self,
        from: usize,
        reply: oneshot::Sender<T>,
        serve: impl AsyncFnOnce(oneshot::Sender<T>),
    ) {
        let (tx, rx) = oneshot::channel();
        serve(tx).await;
        self.reply_to(from, rx.await.ok(), reply).await;
    }

    /// Sends to another shard without waiting: false when its channel is full.
    pub(crate) fn offer(&self, to: usize, msg: ShardMsg) -> bool {
        self.senders.try_send_to(to, msg).is_ok()
    }

    pub(crate) async fn forward(&self, to: usize, msg: ShardMsg) {
        if self.senders.send_to(to, msg).await.is_err() {
            tracing::error!(to, "shard mesh closed");
        }
    }

    // ----- partition operations (local or forwarded) ----------------------------------

    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: Option<Bytes>,
        acks: i16,
    ) -> ProduceOutcome {
        let (tx, rx) = oneshot::channel();
        let owner = owner_shard(topic, partition, self.count);
        if owner == self.id {
            self.local_produce(topic, partition, records, acks, tx)
                .await;
        } else {
            let msg = ShardMsg::Produce {
                topic: topic.to_string(),
                partition,
                records,
                acks,
                reply: tx,
            };
            self.forward(owner, msg).await;
        }
        rx.await.unwrap_or(ProduceOutcome {
            error: code::NOT_LEADER_OR_FOLLOWER,
            base_offset: -1,
            log_start: -1,
            message: Some("the partition closed".into()),
        })
    }

    async fn local_produce(
        &self,
        topic: &str,
        partition: i32,
        records: Option<Bytes>,
        acks: i16,
        reply: oneshot::Sender<ProduceOutcome>,
    ) {
        match self.handle(topic, partition) {
            Some(h) => {
                h.send(Cmd::Produce {
                    records,
                    acks,
                    reply,
                })
                .await;
            }
            None => {
                let _ = reply.send(ProduceOutcome {
                    error: code::UNKNOWN_TOPIC_OR_PARTITION,
                    base_offset: -1,
                    log_start: -1,
                    message: None,
                });
            }
        }
    }

    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> FetchOutcome {
        let (tx, rx) = oneshot::channel();
        let owner = owner_shard(topic, partition, self.count);
        if owner == self.id {
            self.local_fetch(topic, partition, offset, max_bytes, tx)
                .await;
        } else {
            let msg = ShardMsg::Fetch {
                topic: topic.to_string(),
                partition,
                offset,
                max_bytes,
                reply: tx,
            };
            self.forward(owner, msg).await;
        }
        rx.await.unwrap_or(FetchOutcome {
            error: code::NOT_LEADER_OR_FOLLOWER,
            high_watermark: -1,
            log_start: -1,
            records: Default::default(),
        })
    }

    async fn local_fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        reply: oneshot::Sender<FetchOutcome>,
    ) {
        match self.handle(topic, partition) {
            Some(h) => {
                // Nothing to read past the high watermark: answer without queueing behind
                // appends.
                let s = h.status.get();
                if s.online && s.is_leader && offset == s.high_watermark {
                    let _ = reply.send(FetchOutcome {
                        error: code::NONE,
                        high_watermark: s.high_watermark,
                        log_start: s.log_start,
                        records: Default::default(),
                    });
                    return;
                }
                // At the head: the newest committed batches are answered here, not behind
                // the partition's round in progress.
                if s.online && s.is_leader && offset >= s.log_start && offset >= 0 {
                    let held = h.recent.borrow().read(
                        offset as u64,
                        s.high_watermark.max(0) as u64,
                        max_bytes.max(1),
                    );
                    if let Some(records) = held {
                        let _ = reply.send(FetchOutcome {
                            error: code::NONE,
                            high_watermark: s.high_watermark,
                            log_start: s.log_start,
                            records,
                        });
                        return;
                    }
                }
                h.send(Cmd::Fetch {
                    offset,
                    max_bytes,
                    reply,
                })
                .await;
            }
            None => {
                let _ = reply.send(FetchOutcome {
                    error: code::UNKNOWN_TOPIC_OR_PARTITION,
                    high_watermark: -1,
                    log_start: -1,
                    records: Default::default(),
                });
            }
        }
    }

    /// Resolves when the partition has data past `offset` or after `wait_ms`.
    pub async fn wait(&self, topic: &str, partition: i32, offset: i64, wait_ms: u64) {
        let (tx, rx) = oneshot::channel();
        let owner = owner_shard(topic, partition, self.count);
        if owner == self.id {
            self.local_wait(topic, partition, offset, wait_ms, tx).await;
        } else {
            let msg = ShardMsg::Wait {
                topic: topic.to_string(),
                partition,
                offset,
                wait_ms,
                reply: tx,
            };
            self.forward(owner, msg).await;
        }
        let _ = rx.await;
    }

    async fn local_wait(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        wait_ms: u64,
        reply: oneshot::Sender<()>,
    ) {
        if let Some(h) = self.handle(topic, partition) {
            let ready = |h: &PartitionHandle| {
                let s = h.status.get();
                !s.online || s.high_watermark > offset
            };
            if !ready(&h) {
                let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
                loop {
                    let listener = h.changed.listen();
                    if ready(&h) {
                        break;
                    }
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    futures_lite::future::or(listener, glommio::timer::sleep(left)).await;
                }
            }
        }
        let _ = reply.send(());
    }

    /// Asks a partition's task an admin question, on whichever shard owns it.
    pub async fn query(
        &self,
        topic: &str,
        partition: i32,
        query: Query,
    ) -> Result<Answer, (i16, String)> {
        let (tx, rx) = oneshot::channel();
        let owner = owner_shard(topic, partition, self.count);
        if owner == self.id {
            self.local_query(topic, partition, query, tx).await;
        } else {
            let msg = ShardMsg::Query {
                topic: topic.to_string(),
                partition,
                query,
                reply: tx,
            };
            self.forward(owner, msg).await;
        }
        rx.await.unwrap_or(Err((
            code::NOT_LEADER_OR_FOLLOWER,
            "the partition closed meanwhile".into(),
        )))
    }

    async fn local_query(
        &self,
        topic: &str,
        partition: i32,
        query: Query,
        reply: oneshot::Sender<Result<Answer, (i16, String)>>,
    ) {
        match self.handle(topic, partition) {
            Some(h) => {
                h.send(Cmd::Query { query, reply }).await;
            }
            None => {
                let _ = reply.send(Err((
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    "this server does not host this topic-partition".into(),
                )));
            }
        }
    }

    // ----- metadata ----------------------------------------------------------------------

    /// Runs an admin operation on shard 0 (here or forwarded).
    pub async fn admin(self: &Rc<Self>, op: AdminOp) -> AdminResult {
        if self.id == 0 {
            return self.controller_op(op).await;
        }
        let (tx, rx) = oneshot::channel();
        self.forward(0, ShardMsg::Admin { op, reply: tx }).await;
        rx.await.unwrap_or(AdminResult::Err(
            code::UNKNOWN_SERVER_ERROR,
            "controller shard gone".into(),
        ))
    }

    async fn controller_op(self: &Rc<Self>, op: AdminOp) -> AdminResult {
        if self.cluster.is_some() && !matches!(op, AdminOp::AllocProducerId) {
            return self.cluster_op(op).await;
        }
        match op {
            AdminOp::AllocProducerId => {
                let mut guard = self.controller.borrow_mut();
                let c = guard.as_mut().expect("shard 0 holds the controller");
                if c.next_producer_id >= c.meta.producer_id_reserved {
                    // Reserve a block durably before handing any of it out, so a restart
                    // never reuses an id.
                    c.meta.producer_id_reserved = c.next_producer_id + PRODUCER_ID_BLOCK;
                    if let Err(e) = c.meta.save(&self.cfg.data_dir) {
                        return AdminResult::Err(code::KAFKA_STORAGE_ERROR, e.to_string());
                    }
                }
                let id = c.next_producer_id;
                c.next_producer_id += 1;
                if self.cluster.is_some() {
                    // Unique across the cluster without asking anyone: the node id
                    // (unique among brokers) above this broker's own durable counter.
                    return AdminResult::ProducerId((i64::from(self.cfg.node_id) << 32) | id);
                }
                AdminResult::ProducerId(id)
            }
            AdminOp::Security(cmd) => {
                let meta = {
                    let mut guard = self.controller.borrow_mut();
                    let c = guard.as_mut().expect("shard 0 holds the controller");
                    let mut next = c.meta.security.clone();
                    if let Err(e) = next.apply(&cmd) {
                        return AdminResult::Err(code::RESOURCE_NOT_FOUND, e);
                    }
                    let before = std::mem::replace(&mut c.meta.security, next);
                    if let Err(e) = c.meta.save(&self.cfg.data_dir) {
                        c.meta.security = before;
                        return AdminResult::Err(code::KAFKA_STORAGE_ERROR, e.to_string());
                    }
                    c.meta.security.clone()
                };
                self.broadcast_security(meta).await;
                AdminResult::Ok(None)
            }
            AdminOp::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                validate_only,
            } => {
                if let Err((c, e)) = check_new_topic(&name, partitions, &configs) {
                    return AdminResult::Err(c, e);
                }
                if replication_factor != 1 && replication_factor != -1 {
                    return AdminResult::Err(
                        code::INVALID_REPLICATION_FACTOR,
                        format!(
                            "replication factor {replication_factor} is larger than the 1 available broker"
                        ),
                    );
                }
                let meta = TopicMeta {
                    name: name.clone(),
                    id: random_topic_id(),
                    partitions,
                    configs,
                    replicas: Vec::new(),
                    groups: Vec::new(),
                };
                {
                    let mut guard = self.controller.borrow_mut();
                    let c = guard.as_mut().expect("shard 0 holds the controller");
                    if c.meta.topics.contains_key(&name) {
                        return AdminResult::Err(
                            code::TOPIC_ALREADY_EXISTS,
                            format!("topic '{name}' already exists"),
                        );
                    }
                    if validate_only {
                        return AdminResult::Ok(Some(meta));
                    }
                    c.meta.topics.insert(name.clone(), meta.clone());
                    if let Err(e) = c.meta.save(&self.cfg.data_dir) {
                        c.meta.topics.remove(&name);
                        return AdminResult::Err(code::KAFKA_STORAGE_ERROR, e.to_string());
                    }
                }
                match self.broadcast_upsert(&meta).await {
                    Ok(()) => AdminResult::Ok(Some(meta)),
                    Err(e) => {
                        // All or nothing: a topic some of whose partitions could not be
                        // opened (too many open files, a full disk) is taken back out,
                        // so neither the listing nor a restart sees half a topic.
                        tracing::warn!(topic = %meta.name, error = %e, "topic creation failed; rolling it back");
                        {
                            let mut guard = self.controller.borrow_mut();
                            let c = guard.as_mut().expect("shard 0 holds the controller");
                            c.meta.topics.remove(&meta.name);
                            if let Err(e) = c.meta.save(&self.cfg.data_dir) {
                                tracing::error!(error = %e, "cannot save metadata after a failed topic creation");
                            }
                        }
                        self.broadcast_remove(&meta, 0).await;
                        AdminResult::Err(code::KAFKA_STORAGE_ERROR, e)
                    }
                }
            }
            AdminOp::SetConfigs {
                name,
                configs,
                validate_only,
            } => {
                for (k, v) in &configs {
                    if let Err(e) = validate_topic_config(k, v) {
                        return AdminResult::Err(code::INVALID_CONFIG, e);
                    }
                }
                let meta = {
                    let mut guard = self.controller.borrow_mut();
                    let c = guard.as_mut().expect("shard 0 holds the controller");
                    let Some(t) = c.meta.topics.get_mut(&name) else {
                        return AdminResult::Err(
                            code::UNKNOWN_TOPIC_OR_PARTITION,
                            format!("topic '{name}' does not exist"),
                        );
                    };
                    if validate_only {
                        return AdminResult::Ok(Some(t.clone()));
                    }
                    t.configs = configs;
                    let meta = t.clone();
                    if let Err(e) = c.meta.save(&self.cfg.data_dir) {
                        return AdminResult::Err(code::KAFKA_STORAGE_ERROR, e.to_string());
                    }
                    meta
                };
                match self.broadcast_upsert(&meta).await {
                    Ok(()) => AdminResult::Ok(Some(meta)),
                    Err(e) => AdminResult::Err(code::KAFKA_STORAGE_ERROR, e),
                }
            }
            AdminOp::AddPartitions {
                name,
                count,
                validate_only,
            } => {
                let (old, meta) = {
                    let mut guard = self.controller.borrow_mut();
                    let c = guard.as_mut().expect("shard 0 holds the controller");
                    let Some(t) = c.meta.topics.get_mut(&name) else {
                        return AdminResult::Err(
                            code::UNKNOWN_TOPIC_OR_PARTITION,
                            format!("topic '{name}' does not exist"),
                        );
                    };
                    if count <= t.partitions || count > 100_000 {
                        return AdminResult::Err(
                            code::INVALID_PARTITIONS,
                            format!(
                                "topic '{name}' has {} partitions; the new count must be larger and at most 100000, not {count}",
                                t.partitions
                            ),
                        );
                    }
                    let old = t.partitions;
                    if validate_only {
                        let mut m = t.clone();
                        m.partitions = count;
                        return AdminResult::Ok(Some(m));
                    }
                    t.partitions = count;
                    let meta = t.clone();
                    if let Err(e) = c.meta.save(&self.cfg.data_dir) {
                        if let Some(t) = c.meta.topics.get_mut(&name) {
                            t.partitions = old;
                        }
                        return AdminResult::Err(code::KAFKA_STORAGE_ERROR, e.to_string());
                    }
                    (old, meta)
                };
                match self.broadcast_upsert(&meta).await {
                    Ok(()) => AdminResult::Ok(Some(meta)),
                    Err(e) => {
                        // All or nothing, as for a new topic: the added partitions go.
                        tracing::warn!(topic = %name, error = %e, "adding partitions failed; rolling back");
                        let mut back = meta.clone();
                        back.partitions = old;
                        {
                            let mut guard = self.controller.borrow_mut();
                            let c = guard.as_mut().expect("shard 0 holds the controller");
                            c.meta.topics.insert(name.clone(), back.clone());
                            if let Err(e) = c.meta.save(&self.cfg.data_dir) {
                                tracing::error!(error = %e, "cannot save metadata after a failed CreatePartitions");
                            }
                        }
                        self.broadcast_shrink(&back, count).await;
                        AdminResult::Err(code::KAFKA_STORAGE_ERROR, e)
                    }
                }
            }
            AdminOp::DeleteTopic { name } => {
                let meta = {
                    let mut guard = self.controller.borrow_mut();
                    let c = guard.as_mut().expect("shard 0 holds the controller");
                    let Some(meta) = c.meta.topics.remove(&name) else {
                        return AdminResult::Err(
                            code::UNKNOWN_TOPIC_OR_PARTITION,
                            format!("topic '{name}' does not exist"),
                        );
                    };
                    if let Err(e) = c.meta.save(&self.cfg.data_dir) {
                        c.meta.topics.insert(name, meta);
                        return AdminResult::Err(code::KAFKA_STORAGE_ERROR, e.to_string());
                    }
                    meta
                };
                self.broadcast_remove(&meta, 0).await;
                AdminResult::Ok(Some(meta))
            }
        }
    }

    /// Undoes a failed CreatePartitions: partitions `meta.partitions..added_to` are closed
    /// and deleted, and every shard takes the old count back.
    async fn broadcast_shrink(self: &Rc<Self>, meta: &TopicMeta, added_to: i32) {
        let mut grown = meta.clone();
        grown.partitions = added_to;
        self.broadcast_remove(&grown, meta.partitions).await;
        // Every shard takes the old count back (the remove dropped nothing below it).
        if let Err(e) = self.broadcast_upsert(meta).await {
            tracing::error!(topic = %meta.name, error = %e, "cannot restore a topic after a failed CreatePartitions");
        }
    }

    /// Every shard closes and deletes the partitions `from..` of `meta` it owns (`from` 0:
    /// the whole topic, which it also forgets).
    pub(crate) async fn broadcast_remove(self: &Rc<Self>, meta: &TopicMeta, from: i32) {
        let mut waits = Vec::new();
        for to in 0..self.count {
            if to == self.id {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            self.forward(
                to,
                ShardMsg::TopicRemove {
                    meta: meta.clone(),
                    from,
                    reply: tx,
                },
            )
            .await;
            waits.push(rx);
        }
        self.apply_remove(meta, from).await;
        for w in waits {
            let _ = w.await;
        }
    }

    pub(crate) async fn broadcast_upsert(self: &Rc<Self>, meta: &TopicMeta) -> Result<(), String> {
        let mut waits = Vec::new();
        for to in 0..self.count {
            if to == self.id {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            self.forward(
                to,
                ShardMsg::TopicUpsert {
                    meta: meta.clone(),
                    reply: tx,
                },
            )
            .await;
            waits.push(rx);
        }
        let mut result = self.apply_upsert(meta.clone()).await;
        for w in waits {
            match w.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err("a shard did not answer".into()),
            }
        }
        result
    }

    /// Takes a topic (new or changed) into this shard: opens the partitions it owns, or
    /// hands them the new settings.
    pub async fn apply_upsert(&self, meta: TopicMeta) -> Result<(), String> {
        let internal = meta.name == crate::group::OFFSETS_TOPIC;
        let settings = if internal {
            topic_settings(&self.cfg, &self.offsets_overrides())
        } else {
            topic_settings(&self.cfg, &meta.configs)
        };
        if internal {
            *self.internal.borrow_mut() = Some(meta.clone());
        } else {
            self.topics
                .borrow_mut()
                .insert(meta.name.clone(), meta.clone());
        }
        for (p, g) in meta.groups.iter().enumerate() {
            self.routes
                .borrow_mut()
                .insert(*g, (meta.name.clone(), p as i32));
        }
        for p in 0..meta.partitions {
            if owner_shard(&meta.name, p, self.count) != self.id {
                continue;
            }
            if let Some(h) = self.handle(&meta.name, p) {
                let same_group = meta.groups.get(p as usize).is_none_or(|g| *g == h.group);
                if same_group {
                    h.send(Cmd::Configure(settings.clone())).await;
                    continue;
                }
                // The topic was deleted and created again: another group under the same
                // name. The old task goes; `claim_dir` empties its dir for the new one.
                self.partitions.borrow_mut().remove(&(meta.name.clone(), p));
                let (tx, rx) = oneshot::channel();
                if h.send(Cmd::Close(tx)).await {
                    let _ = rx.await;
                }
            }
            let membership = match self.membership(&meta, p) {
                Some(m) => m,
                None => continue, // a cluster partition without a replica here
            };
            let h = partition::open(
                self.data_dir(&meta.name, p),
                self.cfg.node_id,
                settings.clone(),
                Duration::from_millis(self.cfg.retention_check_interval_ms.max(100)),
                membership,
            )
            .await
            .map_err(|e| {
                tracing::error!(topic = %meta.name, partition = p, error = %e, "cannot open partition");
                e
            })?;
            self.partitions
                .borrow_mut()
                .insert((meta.name.clone(), p), h);
        }
        Ok(())
    }

    async fn apply_remove(&self, meta: &TopicMeta, from: i32) {
        if from == 0 {
            self.topics.borrow_mut().remove(&meta.name);
        }
        for (p, g) in meta.groups.iter().enumerate().skip(from.max(0) as usize) {
            self.routes.borrow_mut().remove(g);
            self.views
                .borrow_mut()
                .remove(&(meta.name.clone(), p as i32));
        }
        for p in from..meta.partitions {
            let h = self.partitions.borrow_mut().remove(&(meta.name.clone(), p));
            if let Some(h) = &h {
                let (tx, rx) = oneshot::channel();
                if h.send(Cmd::Close(tx)).await {
                    let _ = rx.await;
                }
            }
            // Also the dir of a partition that failed to open (a rolled-back creation).
            if h.is_some() || owner_shard(&meta.name, p, self.count) == self.id {
                let dir = self.data_dir(&meta.name, p);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove deleted partition")
                    }
                }
            }
        }
    }

    /// Serves a message from shard `from`.
    pub async fn on_message(self: Rc<Self>, from: usize, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver(complete) => complete(),
            ShardMsg::Produce {
                topic,
                partition,
                records,
                acks,
                reply,
            } => {
                self.relay(from, reply, async |tx| {
                    self.local_produce(&topic, partition, records, acks, tx)
                        .await
                })
                .await
            }
            ShardMsg::Raft {
                from: node,
                group,
                items,
            } => self.deliver_local(node, group, items),
            ShardMsg::Hello(h) => self.deliver_hello(h),
            ShardMsg::Proposals { from, batches } => self.take_proposals(from, batches),
            ShardMsg::View {
                topic,
                partition,
                view,
            } => {
                self.views.borrow_mut().insert((topic, partition), view);
                self.claims_due.notify(1);
            }
            ShardMsg::Claims { from, claims } => {
                self.claims
                    .borrow_mut()
                    .update(from, claims, std::time::Instant::now());
            }
            ShardMsg::Cluster {
                brokers,
                controller,
                cluster_id,
            } => {
                *self.cluster_id.borrow_mut() = cluster_id;
                *self.brokers.borrow_mut() = brokers;
                self.controller_leader.set(controller);
            }
            ShardMsg::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                reply,
            } => {
                self.relay(from, reply, async |tx| {
                    self.local_fetch(&topic, partition, offset, max_bytes, tx)
                        .await
                })
                .await
            }
            ShardMsg::Wait {
                topic,
                partition,
                offset,
                wait_ms,
                reply,
            } => {
                self.relay(from, reply, async |tx| {
                    self.local_wait(&topic, partition, offset, wait_ms, tx)
                        .await
                })
                .await
            }
            ShardMsg::Query {
                topic,
                partition,
                query,
                reply,
            } => {
                self.relay(from, reply, async |tx| {
                    self.local_query(&topic, partition, query, tx).await
                })
                .await
            }
            ShardMsg::TopicUpsert { meta, reply } => {
                let r = self.apply_upsert(meta).await;
                self.reply_to(from, Some(r), reply).await;
            }
            ShardMsg::TopicRemove {
                meta,
                from: first,
                reply,
            } => {
                self.apply_remove(&meta, first).await;
                self.reply_to(from, Some(()), reply).await;
            }
            ShardMsg::Group { op, reply } => {
                let r = self.clone().local_group_op(op).await;
                self.reply_to(from, Some(r), reply).await;
            }
            ShardMsg::Security(meta) => self.set_security(meta),
            ShardMsg::Observe(reply) => {
                let snapshot = self.snapshot();
                self.reply_to(from, Some(snapshot), reply).await;
            }
            ShardMsg::Admin { op, reply } => {
                let r = self.controller_op(op).await;
                self.reply_to(from, Some(r), reply).await;
            }
        }
    }

    /// Shard 0: every shard takes in `meta` (this one first), before the change is
    /// answered.
    pub(crate) async fn broadcast_security(&self, meta: SecurityMetadata) {
        for to in (0..self.count).filter(|&t| t != self.id) {
            self.forward(to, ShardMsg::Security(meta.clone())).await;
        }
        self.set_security(meta);
    }

    /// Syncs and closes every partition this shard owns (graceful shutdown).
    pub async fn close_all(&self) {
        let handles: Vec<PartitionHandle> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in handles {
            let (tx, rx) = oneshot::channel();
            if h.send(Cmd::Close(tx)).await {
                let _ = rx.await;
            }
        }
    }
}
