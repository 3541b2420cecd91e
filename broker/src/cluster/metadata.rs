//! A clustered broker's shards and the controller: admin operations become controller
//! proposals, the applied metadata is reconciled into every shard (partitions opened with
//! their replica sets), replication messages are routed to the shard owning their group,
//! and the leadership each replica sees is shared among the shards for Metadata.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use corelog_replication::controller::{
    CONTROLLER_GROUP, ClusterMetadata, MetadataCommand, TopicInfo, assign_replicas, decode_batch,
    encode_command,
};
use corelog_replication::security::SecurityCommand;
use corelog_replication::{GroupId, Message, NodeId};

use super::controller::CtlCmd;
use super::transport::{Deliver, Hello};
use crate::errors as code;
use crate::partition::{Cmd, Membership, View};
use crate::shard::{AdminOp, AdminResult, Shard, ShardMsg};
use crate::topic_configs::validate as validate_topic_config;
use crate::topics::{TopicMeta, owner_shard, random_topic_id};

/// A topic of the applied metadata as the shards hold it.
pub fn topic_meta(name: &str, t: &TopicInfo) -> TopicMeta {
    TopicMeta {
        name: name.to_string(),
        id: t.id,
        partitions: t.partitions.len() as i32,
        configs: t.configs.clone(),
        replicas: t
            .partitions
            .iter()
            .map(|p| p.replicas.iter().map(|r| *r as i32).collect())
            .collect(),
        groups: t.partitions.iter().map(|p| p.group).collect(),
    }
}

impl Shard {
    /// Where partition `p` of `meta` replicates: None when this broker holds no replica.
    pub(crate) fn membership(&self, meta: &TopicMeta, p: i32) -> Option<Membership> {
        let Some(c) = &self.cluster else {
            return Some(Membership::solo(self.cfg.node_id));
        };
        let replicas = meta.replicas.get(p as usize)?;
        if !replicas.contains(&(c.me as i32)) {
            return None;
        }
        let (views, outbox, ready, due) = (
            self.views.clone(),
            self.view_outbox.clone(),
            self.view_ready.clone(),
            self.claims_due.clone(),
        );
        let topic = meta.name.clone();
        Some(Membership {
            group: *meta.groups.get(p as usize)?,
            voters: replicas.iter().map(|r| *r as NodeId).collect(),
            peers: Some(c.peers.clone()),
            on_view: Some(Rc::new(move |_g: GroupId, v: View| {
                views.borrow_mut().insert((topic.clone(), p), v.clone());
                outbox.borrow_mut().push((topic.clone(), p, v));
                ready.notify(1);
                due.notify(1);
            })),
        })
    }

    /// Tells the other shards the views this shard's partitions published (a task per
    /// shard of a clustered broker).
    pub async fn relay_views(self: Rc<Self>) {
        while !self.stopping.get() {
            let l = self.view_ready.listen();
            let batch: Vec<(String, i32, View)> =
                std::mem::take(&mut *self.view_outbox.borrow_mut());
            if batch.is_empty() {
                futures_lite::future::or(l, glommio::timer::sleep(Duration::from_millis(500)))
                    .await;
                continue;
            }
            for to in (0..self.count).filter(|&t| t != self.id) {
                for (topic, partition, view) in &batch {
                    self.forward(
                        to,
                        ShardMsg::View {
                            topic: topic.clone(),
                            partition: *partition,
                            view: view.clone(),
                        },
                    )
                    .await;
                }
            }
        }
    }

    /// Shard 0: announces the groups this broker leads to every peer (see `claims.rs`),
    /// every `ANNOUNCE_EVERY` and soon after a view changes.
    pub async fn announce_claims(self: Rc<Self>) {
        use super::claims::ANNOUNCE_EVERY;
        let Some(c) = self.cluster.clone() else {
            return;
        };
        while !self.stopping.get() {
            let due = self.claims_due.listen();
            futures_lite::future::or(due, glommio::timer::sleep(ANNOUNCE_EVERY)).await;
            // Changes come in bursts (an election moves many groups): take them together.
            glommio::timer::sleep(Duration::from_millis(10)).await;
            let me = c.me as i32;
            let mut claims = Vec::new();
            for ((topic, p), v) in self.views.borrow().iter() {
                if v.leader != me {
                    continue;
                }
                let meta = if topic == crate::group::OFFSETS_TOPIC {
                    self.internal.borrow().clone()
                } else {
                    self.topic(topic)
                };
                let Some(group) = meta.and_then(|m| m.groups.get(*p as usize).copied()) else {
                    continue;
                };
                claims.push(corelog_replication::LeaderClaim {
                    group,
                    epoch: v.epoch.max(0) as u32,
                    isr: v.isr.iter().map(|n| *n as NodeId).collect(),
                });
            }
            for (to, _) in c.voters.iter().filter(|(id, _)| *id != c.me) {
                c.peers.send(
                    *to,
                    corelog_replication::Envelope {
                        from: c.me,
                        items: Vec::new(),
                        claims: Some(claims.clone()),
                        proposals: Vec::new(),
                    },
                );
            }
        }
    }

    /// Shard 0: the controller applied new metadata, or its leader changed.
    pub fn on_metadata(self: &Rc<Self>, meta: Rc<ClusterMetadata>, leader: Option<NodeId>) {
        *self.latest_meta.borrow_mut() = Some((meta, leader));
        if !self.reconciling.get() {
            self.reconciling.set(true);
            glommio::spawn_local(self.clone().reconcile()).detach();
        }
    }

    /// Brings every shard to the newest applied metadata: brokers and controller leader,
    /// then topics opened, changed or removed.
    async fn reconcile(self: Rc<Self>) {
        loop {
            let Some((meta, leader)) = self.latest_meta.borrow_mut().take() else {
                break;
            };
            let brokers: BTreeMap<NodeId, (String, u16)> = meta
                .brokers
                .iter()
                .map(|(id, b)| (*id, (b.host.clone(), b.port)))
                .collect();
            for to in (0..self.count).filter(|&t| t != self.id) {
                self.forward(
                    to,
                    ShardMsg::Cluster {
                        brokers: brokers.clone(),
                        controller: leader,
                        cluster_id: meta.cluster_id.clone(),
                    },
                )
                .await;
            }
            *self.brokers.borrow_mut() = brokers;
            *self.cluster_id.borrow_mut() = meta.cluster_id.clone();
            self.controller_leader.set(leader);
            let pending = self.security.borrow().authorizer.pending();
            if pending || self.security.borrow().meta != meta.security {
                self.broadcast_security(meta.security.clone()).await;
            }
            for (name, t) in &meta.topics {
                let tm = topic_meta(name, t);
                let have = if name == crate::group::OFFSETS_TOPIC {
                    self.internal.borrow().clone()
                } else {
                    self.topic(name)
                };
                if have.as_ref() != Some(&tm) {
                    if let Err(e) = self.broadcast_upsert(&tm).await {
                        tracing::error!(topic = %name, error = %e, "cannot open the topic's partitions here");
                    }
                }
            }
            let gone: Vec<TopicMeta> = self
                .topics
                .borrow()
                .values()
                .filter(|t| !meta.topics.contains_key(&t.name))
                .cloned()
                .collect();
            for t in gone {
                self.broadcast_remove(&t, 0).await;
            }
        }
        self.reconciling.set(false);
    }

    /// Admin operations of a clustered broker (shard 0): proposals to the controller
    /// group, answered once applied here and taken into the shards.
    pub(crate) async fn cluster_op(self: &Rc<Self>, op: AdminOp) -> AdminResult {
        let Some(ctl) = self.ctl.borrow().clone() else {
            return AdminResult::Err(
                code::NOT_CONTROLLER,
                "the controller is not running yet".into(),
            );
        };
        let leads = self.controller_leader.get() == Some(self.cfg.node_id as NodeId);
        if let AdminOp::Security(cmd) = op {
            return self.propose_security(&ctl, cmd, leads).await;
        }
        // A broker that does not lead the controller forwards what any broker must take
        // (a Metadata request's auto-creation; Kafka clients send CreateTopics to the
        // controller, the rest of the topic changes too).
        let forwardable = matches!(
            op,
            AdminOp::CreateTopic {
                validate_only: false,
                ..
            }
        );
        if !leads && !forwardable {
            return AdminResult::Err(
                code::NOT_CONTROLLER,
                format!(
                    "broker {} is not the controller (the controller is {:?})",
                    self.cfg.node_id,
                    self.controller_leader.get()
                ),
            );
        }
        let brokers: Vec<NodeId> = self.brokers.borrow().keys().copied().collect();
        let (name, cmd, validate_only) = match op {
            AdminOp::Security(_) => unreachable!("proposed above"),
            AdminOp::AllocProducerId => unreachable!("allocated locally"),
            AdminOp::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                validate_only,
            } => {
                if let Err((c, e)) = crate::shard::check_new_topic(&name, partitions, &configs) {
                    return AdminResult::Err(c, e);
                }
                let rf = if replication_factor == -1 {
                    self.cfg.default_replication_factor
                } else {
                    replication_factor
                };
                if rf < 1 || rf as usize > brokers.len() {
                    return AdminResult::Err(
                        code::INVALID_REPLICATION_FACTOR,
                        format!(
                            "replication factor {rf} is not within 1..={} (the registered brokers)",
                            brokers.len()
                        ),
                    );
                }
                if self.topic(&name).is_some() {
                    return AdminResult::Err(
                        code::TOPIC_ALREADY_EXISTS,
                        format!("topic '{name}' already exists"),
                    );
                }
                // Leaders of consecutive topics start on different brokers.
                let start = crc32c::crc32c(name.as_bytes());
                let replicas = match assign_replicas(&brokers, partitions as u32, rf as u32, start)
                {
                    Ok(r) => r,
                    Err(e) => {
                        return AdminResult::Err(code::INVALID_REPLICATION_FACTOR, e.to_string());
                    }
                };
                (
                    name.clone(),
                    MetadataCommand::CreateTopic {
                        name,
                        id: random_topic_id(),
                        partitions: replicas,
                        configs: configs.into_iter().collect(),
                    },
                    validate_only,
                )
            }
            AdminOp::DeleteTopic { name } => {
                if self.topic(&name).is_none() {
                    return AdminResult::Err(
                        code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic '{name}' does not exist"),
                    );
                }
                (name.clone(), MetadataCommand::DeleteTopic { name }, false)
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
                if self.topic(&name).is_none() {
                    return AdminResult::Err(
                        code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic '{name}' does not exist"),
                    );
                }
                (
                    name.clone(),
                    MetadataCommand::SetTopicConfigs {
                        name,
                        configs: configs.into_iter().collect(),
                    },
                    validate_only,
                )
            }
            AdminOp::AddPartitions {
                name,
                count,
                validate_only,
            } => {
                let Some(t) = self.topic(&name) else {
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
                let rf = t.replicas.first().map_or(1, Vec::len) as u32;
                let start = crc32c::crc32c(name.as_bytes()).wrapping_add(t.partitions as u32);
                let added =
                    match assign_replicas(&brokers, (count - t.partitions) as u32, rf, start) {
                        Ok(r) => r,
                        Err(e) => {
                            return AdminResult::Err(
                                code::INVALID_REPLICATION_FACTOR,
                                e.to_string(),
                            );
                        }
                    };
                (
                    name.clone(),
                    MetadataCommand::AddPartitions {
                        name,
                        partitions: added,
                    },
                    validate_only,
                )
            }
        };
        let before = self.topic(&name);
        if validate_only {
            return AdminResult::Ok(before);
        }
        let proposed = if leads {
            ctl.propose(cmd).await
        } else {
            let shard = self.clone();
            let wanted = name.clone();
            self.forward_proposal(&ctl, cmd, move || shard.topic(&wanted).is_some())
                .await
        };
        if let Err((c, m)) = proposed {
            return AdminResult::Err(c, m);
        }
        // Answered once this broker's shards took the change in, so the client's next
        // Metadata request sees it.
        for _ in 0..1000 {
            let now = self.topic(&name);
            if now != before && !self.reconciling.get() {
                return AdminResult::Ok(now.or(before));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        AdminResult::Ok(self.topic(&name).or(before))
    }

    /// Proposes a change of users or ACLs (or forwards it to the controller's leader);
    /// answered once this broker's shards show it.
    async fn propose_security(
        self: &Rc<Self>,
        ctl: &super::controller::ControllerHandle,
        cmd: SecurityCommand,
        leads: bool,
    ) -> AdminResult {
        // Checked here against this broker's copy, so a change that cannot apply (a
        // credential that is not there) is answered at once, not after a timeout.
        if let Err(e) = self.security.borrow().meta.clone().apply(&cmd) {
            return AdminResult::Err(code::RESOURCE_NOT_FOUND, e);
        }
        let shown = {
            let (shard, cmd) = (self.clone(), cmd.clone());
            move || shard.security.borrow().meta.reflects(&cmd) && !shard.reconciling.get()
        };
        let command = MetadataCommand::Security(Box::new(cmd));
        let proposed = if leads {
            ctl.propose(command).await
        } else {
            self.forward_proposal(ctl, command, shown.clone()).await
        };
        if let Err((c, m)) = proposed {
            return AdminResult::Err(c, m);
        }
        for _ in 0..1000 {
            if shown() {
                return AdminResult::Ok(None);
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        AdminResult::Err(
            code::REQUEST_TIMED_OUT,
            "committed, not yet applied here".into(),
        )
    }

    /// Sends `cmd` to the controller's leader as a proposal on the RPC links (the
    /// peer proved the cluster secret when its link opened) and waits until `done` shows
    /// it applied here. Sent again only to a new leader: a copy sent twice to one leader
    /// could undo a later change. Proposed here if this broker becomes the leader.
    async fn forward_proposal(
        self: &Rc<Self>,
        ctl: &super::controller::ControllerHandle,
        cmd: MetadataCommand,
        done: impl Fn() -> bool,
    ) -> Result<(), (i16, String)> {
        let Some(c) = self.cluster.clone() else {
            return Err((code::NOT_CONTROLLER, "not a cluster member".into()));
        };
        let batch = bytes::Bytes::from(encode_command(&cmd, crate::util::wall_ms()));
        let deadline = std::time::Instant::now() + FORWARD_TIMEOUT;
        let mut sent_to = None;
        while std::time::Instant::now() < deadline {
            if done() {
                return Ok(());
            }
            match self.controller_leader.get() {
                Some(l) if l == c.me => return ctl.propose(cmd).await,
                Some(l) if sent_to != Some(l) => {
                    c.peers.send(
                        l,
                        corelog_replication::Envelope {
                            from: c.me,
                            items: Vec::new(),
                            claims: None,
                            proposals: vec![batch.clone()],
                        },
                    );
                    sent_to = Some(l);
                }
                _ => {}
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        Err((
            code::REQUEST_TIMED_OUT,
            format!(
                "forwarded to the controller (broker {:?}); not applied within {} s",
                sent_to,
                FORWARD_TIMEOUT.as_secs()
            ),
        ))
    }

    /// Shard 0: proposals a peer forwarded (see [`Self::forward_proposal`]). Only user, ACL
    /// and topic-creation commands are taken, and only while this broker leads the
    /// controller; the forwarder sends again to a new leader.
    pub(crate) fn take_proposals(&self, from: NodeId, batches: Vec<bytes::Bytes>) {
        let Some(ctl) = self.ctl.borrow().clone() else {
            return;
        };
        if self.controller_leader.get() != Some(self.cfg.node_id as NodeId) {
            tracing::debug!(
                from,
                "forwarded proposal at a broker that does not lead the controller; dropped"
            );
            return;
        }
        for b in batches {
            match decode_batch(&b) {
                Ok(Some(
                    cmd @ (MetadataCommand::Security(_) | MetadataCommand::CreateTopic { .. }),
                )) => {
                    let ctl = ctl.clone();
                    glommio::spawn_local(async move {
                        if let Err((_, m)) = ctl.propose(cmd).await {
                            tracing::debug!(from, "forwarded proposal not applied: {m}");
                        }
                    })
                    .detach();
                }
                other => {
                    tracing::warn!(from, command = ?other.map(|c| c.map(|_| ())), "forwarded proposal refused: only user, ACL and topic-creation commands are taken from peers");
                }
            }
        }
    }

    /// Hands replication messages to the group `group` on this shard.
    pub(crate) fn deliver_local(&self, from: NodeId, group: GroupId, items: Vec<Message>) {
        if group == CONTROLLER_GROUP {
            if let Some(c) = self.ctl.borrow().as_ref() {
                c.offer(CtlCmd::Raft { from, items });
            }
            return;
        }
        let route = self.routes.borrow().get(&group).cloned();
        match route.and_then(|(t, p)| self.handle(&t, p)) {
            Some(h) => h.offer(Cmd::Raft { from, items }),
            None => tracing::trace!(group, from, "replication message for a group not here"),
        }
    }

    /// Shard 0: a peer's hello, for the controller (kept until the controller runs: a
    /// peer says hello once per connection).
    pub(crate) fn deliver_hello(&self, h: Hello) {
        match self.ctl.borrow().as_ref() {
            Some(c) => c.offer(CtlCmd::Hello(h)),
            None => self.early_hellos.borrow_mut().push(h),
        }
    }

    pub fn set_controller(&self, handle: super::controller::ControllerHandle) {
        for h in self.early_hellos.borrow_mut().drain(..) {
            handle.offer(CtlCmd::Hello(h));
        }
        *self.ctl.borrow_mut() = Some(handle);
    }
}

/// How long a broker that forwarded a change to the controller waits to see it applied.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

impl Deliver for Shard {
    fn deliver(&self, from: NodeId, items: Vec<(GroupId, Message)>) {
        let mut by_group: BTreeMap<GroupId, Vec<Message>> = BTreeMap::new();
        for (g, m) in items {
            by_group.entry(g).or_default().push(m);
        }
        for (group, msgs) in by_group {
            let owner = if group == CONTROLLER_GROUP {
                0
            } else {
                match self.routes.borrow().get(&group) {
                    Some((t, p)) => owner_shard(t, *p, self.count),
                    None => continue,
                }
            };
            if owner == self.id {
                self.deliver_local(from, group, msgs);
            } else if !self.offer(
                owner,
                ShardMsg::Raft {
                    from,
                    group,
                    items: msgs,
                },
            ) {
                tracing::trace!(group, "mesh full; replication message dropped");
            }
        }
    }

    fn claims(&self, from: NodeId, claims: Vec<corelog_replication::LeaderClaim>) {
        for to in (0..self.count).filter(|&t| t != self.id) {
            let msg = ShardMsg::Claims {
                from,
                claims: claims.clone(),
            };
            if !self.offer(to, msg) {
                tracing::trace!(to, "mesh full; leader claims not relayed");
            }
        }
        self.claims
            .borrow_mut()
            .update(from, claims, std::time::Instant::now());
    }

    fn hello(&self, hello: Hello) {
        if self.id == 0 {
            self.deliver_hello(hello);
        } else {
            let _ = self.offer(0, ShardMsg::Hello(hello));
        }
    }

    fn proposals(&self, from: NodeId, batches: Vec<bytes::Bytes>) {
        if self.id == 0 {
            self.take_proposals(from, batches);
        } else {
            let _ = self.offer(0, ShardMsg::Proposals { from, batches });
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.get()
    }
}
