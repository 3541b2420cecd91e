//! An in-memory cluster with virtual time, for unit tests of the protocol: every node runs
//! a [`Node`] with the same groups; storage is a vector of batches (durable at once), the
//! network a queue with a fixed latency and cuttable links. The madsim simulator (sim/)
//! is the faulty, randomised version of this.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use corelog_storage::batch::{BatchHeader, build};

use crate::epochs::EpochCache;
use crate::node::{Envelope, GroupId, Node};
use crate::raft::{HardState, LogState, Raft, RaftConfig, Role, StorageOp};
use crate::{NodeId, Offset, Term};

#[derive(Default, Clone)]
pub struct MemLog {
    pub batches: Vec<Bytes>,
    /// The log start (batches wholly below it are gone).
    pub start: Offset,
}

impl MemLog {
    pub fn end(&self) -> Offset {
        self.batches.last().map_or(self.start, |b| {
            BatchHeader::parse(b).unwrap().last_offset() as u64 + 1
        })
    }

    /// Moves the start up (within the log) and drops the batches wholly below it.
    pub fn advance_start(&mut self, offset: Offset) {
        self.start = self.start.max(offset.min(self.end()));
        let start = self.start;
        self.batches
            .retain(|b| BatchHeader::parse(b).unwrap().last_offset() as u64 >= start);
    }

    fn truncate(&mut self, offset: Offset) {
        self.batches
            .retain(|b| (BatchHeader::parse(b).unwrap().base_offset as u64) < offset);
    }

    fn read(&self, from: Offset, max_bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for b in &self.batches {
            let h = BatchHeader::parse(b).unwrap();
            if h.last_offset() as u64 >= from
                && (out.is_empty() || out.len() + b.len() <= max_bytes)
            {
                out.extend_from_slice(b);
            }
        }
        out
    }

    fn state(&self) -> LogState {
        let mut epochs = EpochCache::new();
        for b in &self.batches {
            let h = BatchHeader::parse(b).unwrap();
            epochs.record(h.partition_leader_epoch as Term, h.base_offset as u64);
        }
        LogState {
            start: self.start,
            end: self.end(),
            epochs,
        }
    }
}

pub struct SimNode {
    pub node: Option<Node>,
    pub logs: BTreeMap<GroupId, MemLog>,
    pub hard: BTreeMap<GroupId, HardState>,
}

pub struct Cluster {
    pub now: u64,
    pub nodes: BTreeMap<NodeId, SimNode>,
    groups: Vec<GroupId>,
    voters: Vec<NodeId>,
    in_flight: Vec<(u64, NodeId, Envelope)>,
    pub cut: BTreeSet<(NodeId, NodeId)>,
    latency_ms: u64,
    seed: u64,
    /// (group, term) -> leader, over the whole run: at most one each.
    pub leaders: BTreeMap<(GroupId, Term), NodeId>,
    /// Adjusts every node's config (limits, bugs) before it starts.
    pub tweak: fn(&mut RaftConfig),
    /// Every batch any node ever considered committed, by (group, base offset): a
    /// committed batch must never change.
    pub committed: BTreeMap<(GroupId, Offset), Bytes>,
}

impl Cluster {
    pub fn new(n: u32, groups: &[GroupId], seed: u64) -> Self {
        let voters: Vec<NodeId> = (1..=n).collect();
        let mut c = Self {
            now: 0,
            nodes: BTreeMap::new(),
            groups: groups.to_vec(),
            voters: voters.clone(),
            in_flight: Vec::new(),
            cut: BTreeSet::new(),
            latency_ms: 5,
            seed,
            leaders: BTreeMap::new(),
            tweak: |_| {},
            committed: BTreeMap::new(),
        };
        for &id in &voters {
            c.nodes.insert(
                id,
                SimNode {
                    node: None,
                    logs: BTreeMap::new(),
                    hard: BTreeMap::new(),
                },
            );
            c.start(id);
        }
        c
    }

    /// (Re)starts a node from what its storage holds.
    pub fn start(&mut self, id: NodeId) {
        let mut node = Node::new(id);
        let sn = self.nodes.get_mut(&id).unwrap();
        for &g in &self.groups {
            let mut cfg =
                RaftConfig::new(id, self.voters.clone(), self.seed ^ u64::from(g) ^ self.now);
            (self.tweak)(&mut cfg);
            let log = sn.logs.entry(g).or_default().state();
            let hard = sn.hard.get(&g).copied().unwrap_or_default();
            node.add_group(g, Raft::new(cfg, hard, log, self.now));
        }
        sn.node = Some(node);
    }

    pub fn stop(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).unwrap().node = None;
        self.in_flight.retain(|(_, to, _)| *to != id);
    }

    /// Restarts every node with `tweak` applied to its config (state is kept).
    pub fn restart_all_with(&mut self, tweak: fn(&mut RaftConfig)) {
        self.tweak = tweak;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id);
            self.start(id);
        }
    }

    /// Cuts every link between `a` and the rest, both ways.
    pub fn isolate(&mut self, a: NodeId) {
        for &b in &self.voters {
            if a != b {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn raft(&self, id: NodeId, g: GroupId) -> &Raft {
        self.nodes[&id].node.as_ref().unwrap().group(g).unwrap()
    }

    pub fn raft_mut(&mut self, id: NodeId, g: GroupId) -> &mut Raft {
        self.nodes
            .get_mut(&id)
            .unwrap()
            .node
            .as_mut()
            .unwrap()
            .group_mut(g)
            .unwrap()
    }

    pub fn leader_of(&self, g: GroupId) -> Option<NodeId> {
        let mut leaders: Vec<(Term, NodeId)> = self
            .nodes
            .iter()
            .filter_map(|(&id, sn)| sn.node.as_ref().map(|n| (id, n.group(g).unwrap())))
            .filter(|(_, r)| r.role() == Role::Leader)
            .map(|(id, r)| (r.term(), id))
            .collect();
        leaders.sort();
        leaders.last().map(|&(_, id)| id)
    }

    pub fn propose(&mut self, g: GroupId, value: &[u8]) -> Option<(Offset, Offset)> {
        let leader = self.leader_of(g)?;
        let now = self.now;
        self.raft_mut(leader, g)
            .propose(now, build::batch(&[value], now as i64))
            .ok()
    }

    /// Drains every node's outputs until quiet: storage applied at once (durable),
    /// envelopes queued for delivery.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut busy = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let now = self.now;
                let sn = self.nodes.get_mut(&id).unwrap();
                let Some(node) = sn.node.as_mut() else {
                    continue;
                };
                let ready = node.take_ready();
                for w in ready.work {
                    busy = true;
                    if let Some(h) = w.hard_state {
                        sn.hard.insert(w.group, h);
                    }
                    let log = sn.logs.entry(w.group).or_default();
                    let mut reads = Vec::new();
                    for op in w.storage {
                        match op {
                            StorageOp::Append(bs) | StorageOp::AppendOwn(bs) => {
                                for b in bs {
                                    let h = BatchHeader::parse(&b).unwrap();
                                    assert_eq!(
                                        h.base_offset as u64,
                                        log.end(),
                                        "append must continue the log"
                                    );
                                    log.batches.push(b);
                                }
                            }
                            StorageOp::Truncate(o) => log.truncate(o),
                            StorageOp::AdvanceStart(o) => log.advance_start(o),
                            StorageOp::Restart(o) => {
                                log.batches.clear();
                                log.start = o;
                            }
                            StorageOp::Read {
                                peer,
                                from,
                                max_bytes,
                            } => reads.push((peer, from, log.read(from, max_bytes))),
                        }
                    }
                    let end = log.end();
                    node.on_persisted(now, w.group, end);
                    for (peer, from, bytes) in reads {
                        node.group_mut(w.group)
                            .unwrap()
                            .on_read(now, peer, from, bytes.into());
                    }
                }
                for (to, env) in ready.envelopes {
                    busy = true;
                    if !self.cut.contains(&(id, to)) {
                        self.in_flight.push((now + self.latency_ms, to, env));
                    }
                }
                if let Some(node) = self.nodes[&id].node.as_ref() {
                    for (g, r) in node.groups() {
                        if r.role() == Role::Leader {
                            let prev = self.leaders.insert((g, r.term()), id);
                            assert!(
                                prev.is_none_or(|p| p == id),
                                "two leaders in term {} of group {g}",
                                r.term()
                            );
                        }
                    }
                }
            }
            if !busy {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    /// Advances virtual time to the next event and handles it.
    pub fn step(&mut self) {
        self.settle();
        let next_msg = self.in_flight.iter().map(|(t, _, _)| *t).min();
        let next_tick = self
            .nodes
            .values()
            .filter_map(|sn| sn.node.as_ref())
            .map(Node::next_deadline)
            .min();
        let next = next_msg
            .into_iter()
            .chain(next_tick)
            .min()
            .unwrap_or(self.now + 1);
        self.now = self.now.max(next);
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|(t, _, _)| *t <= now);
        self.in_flight = later;
        for (_, to, env) in due {
            // Links are checked again on delivery: a cut also drops what was in flight.
            if self.cut.contains(&(env.from, to)) {
                continue;
            }
            if let Some(node) = self.nodes.get_mut(&to).and_then(|sn| sn.node.as_mut()) {
                node.on_envelope(now, env);
            }
        }
        for sn in self.nodes.values_mut() {
            if let Some(node) = sn.node.as_mut() {
                node.on_tick(now);
            }
        }
        self.settle();
    }

    pub fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        while self.now < until {
            self.step();
        }
    }

    /// Asserts that every two running replicas agree on every batch below both their
    /// commit indexes.
    pub fn check_committed_prefixes_agree(&mut self, g: GroupId) {
        let live: Vec<(NodeId, Offset, &MemLog)> = self
            .nodes
            .iter()
            .filter_map(|(&id, sn)| {
                sn.node
                    .as_ref()
                    .map(|n| (id, n.group(g).unwrap().commit(), &sn.logs[&g]))
            })
            .collect();
        for (a, ca, la) in &live {
            for (b, cb, lb) in &live {
                let upto = (*ca).min(*cb);
                // Both hold everything from the later start on.
                let from = la.start.max(lb.start);
                let held = |x: &&Bytes| {
                    let h = BatchHeader::parse(x).unwrap();
                    (h.last_offset() as u64) < upto && h.base_offset as u64 >= from
                };
                let pa: Vec<&Bytes> = la.batches.iter().filter(held).collect();
                let pb: Vec<&Bytes> = lb.batches.iter().filter(held).collect();
                assert_eq!(pa, pb, "nodes {a} and {b} diverge below commit {upto}");
            }
        }
        for (id, commit, log) in &live {
            for b in &log.batches {
                let h = BatchHeader::parse(b).unwrap();
                if (h.last_offset() as u64) < *commit {
                    let first = self
                        .committed
                        .entry((g, h.base_offset as u64))
                        .or_insert_with(|| b.clone());
                    assert_eq!(
                        first, b,
                        "node {id} changed committed batch {} of group {g}",
                        h.base_offset
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn elect(c: &mut Cluster, g: GroupId) -> NodeId {
        for _ in 0..2000 {
            c.step();
            if let Some(l) = c.leader_of(g) {
                if c.raft(l, g).commit() > 0 {
                    return l;
                }
            }
        }
        panic!("no leader elected");
    }

    fn values(log: &MemLog) -> Vec<Vec<u8>> {
        log.batches
            .iter()
            .filter(|b| BatchHeader::parse(b).unwrap().attributes & 0x20 == 0)
            .map(|b| b[b.len() - 1 - 5..b.len() - 1].to_vec())
            .collect()
    }

    #[test]
    fn three_replicas_elect_one_leader_and_replicate() {
        let mut c = Cluster::new(3, &[1], 1);
        let leader = elect(&mut c, 1);
        for i in 0..20u8 {
            c.propose(1, &[b'v', b'a', b'l', b'0' + i / 10, b'0' + i % 10])
                .unwrap();
            c.step();
        }
        c.run_for(500);
        let end = c.raft(leader, 1).end();
        for id in 1..=3 {
            assert_eq!(c.raft(id, 1).commit(), end, "node {id} commit");
            assert_eq!(values(&c.nodes[&id].logs[&1]).len(), 20);
        }
        c.check_committed_prefixes_agree(1);
        assert!(c.raft(leader, 1).read_high_watermark(c.now).is_some());
    }

    /// Kafka's ISR: a stopped follower leaves it once it lags past the bound; restarted
    /// and caught up, it returns.
    #[test]
    fn a_restarted_follower_returns_to_the_in_sync_replicas() {
        let mut c = Cluster::new(3, &[1], 4);
        let leader = elect(&mut c, 1);
        c.run_for(200);
        assert_eq!(c.raft(leader, 1).in_sync(c.now, 1000), vec![1, 2, 3]);
        let follower = (1..=3).find(|&i| i != leader).unwrap();
        c.stop(follower);
        for i in 0..10u8 {
            c.propose(1, &[b'v', b'a', b'l', b'0', b'0' + i]).unwrap();
            c.step();
        }
        c.run_for(1500);
        assert!(!c.raft(leader, 1).in_sync(c.now, 1000).contains(&follower));
        c.start(follower);
        c.run_for(1500);
        assert_eq!(c.leader_of(1), Some(leader));
        assert_eq!(c.raft(leader, 1).in_sync(c.now, 1000), vec![1, 2, 3]);
    }

    /// Kafka's truncate-fully-and-start-at: a follower that was down while the leader's
    /// log start passed its log end starts its log again at the leader's start, catches
    /// up, and can lead afterwards with nothing committed lost.
    #[test]
    fn a_follower_behind_the_leaders_start_restarts_its_log_there() {
        let mut c = Cluster::new(3, &[1], 6);
        let leader = elect(&mut c, 1);
        let lagger = (1..=3).find(|&i| i != leader).unwrap();
        c.stop(lagger);
        for i in 0..10u8 {
            c.propose(1, &[b'v', b'a', b'l', b'0', b'0' + i]).unwrap();
            c.step();
        }
        c.run_for(300);
        // Retention on the leader: only what is committed and durable may go.
        let bound = c.raft(leader, 1).start_bound();
        assert!(bound > 5);
        let start = bound - 3;
        c.nodes
            .get_mut(&leader)
            .unwrap()
            .logs
            .get_mut(&1)
            .unwrap()
            .advance_start(start);
        let moved = c.nodes[&leader].logs[&1].start;
        c.raft_mut(leader, 1).on_start_moved(moved);
        c.start(lagger);
        c.run_for(1500);
        let lag = &c.nodes[&lagger].logs[&1];
        let first = BatchHeader::parse(&lag.batches[0]).unwrap().base_offset as u64;
        assert!(
            first <= moved && lag.start <= moved && lag.start >= first,
            "restarted at {}",
            lag.start
        );
        assert_eq!(c.raft(lagger, 1).end(), c.raft(leader, 1).end());
        assert_eq!(c.raft(lagger, 1).commit(), c.raft(leader, 1).commit());
        c.check_committed_prefixes_agree(1);
        // The third replica followed the leader's start too, within its commit.
        let third = (1..=3).find(|&i| i != leader && i != lagger).unwrap();
        assert_eq!(c.nodes[&third].logs[&1].start, moved);
        // The restarted replica can lead: its votes know the term before its start.
        c.isolate(leader);
        c.run_for(2000);
        let new = c
            .leader_of(1)
            .filter(|&l| l != leader)
            .expect("a new leader");
        c.propose(1, b"after").unwrap();
        c.run_for(500);
        c.heal();
        c.run_for(1500);
        c.check_committed_prefixes_agree(1);
        assert!(c.raft(new, 1).commit() > c.raft(new, 1).start());
    }

    #[test]
    fn five_replicas_survive_leader_isolation_and_truncate_its_uncommitted_tail() {
        let mut c = Cluster::new(5, &[1], 2);
        let old = elect(&mut c, 1);
        c.propose(1, b"a0000").unwrap();
        c.run_for(200);
        let committed = c.raft(old, 1).commit();
        c.isolate(old);
        // Written to the isolated leader only: can never commit.
        c.propose(1, b"lost0");
        c.run_for(2000);
        let new = c.leader_of(1).filter(|&l| l != old).expect("a new leader");
        assert!(
            c.raft(new, 1).term() > c.raft(old, 1).term() || c.raft(old, 1).role() != Role::Leader
        );
        assert_eq!(
            c.raft(old, 1).commit(),
            committed,
            "isolated leader must not commit"
        );
        assert!(
            c.raft(old, 1).read_high_watermark(c.now).is_none(),
            "deposed leader serves no HW"
        );
        let now = c.now;
        c.raft_mut(new, 1)
            .propose(now, build::batch(&[b"b0000"], 0))
            .unwrap();
        c.heal();
        c.run_for(2000);
        for id in 1..=5 {
            let v = values(&c.nodes[&id].logs[&1]);
            assert!(
                !v.contains(&b"lost0".to_vec()),
                "node {id} kept an uncommitted entry"
            );
            assert_eq!(v, vec![b"a0000".to_vec(), b"b0000".to_vec()], "node {id}");
        }
        c.check_committed_prefixes_agree(1);
    }

    #[test]
    fn pre_vote_keeps_a_rejoining_node_from_disrupting_the_leader() {
        let mut c = Cluster::new(3, &[1], 3);
        let leader = elect(&mut c, 1);
        let term = c.raft(leader, 1).term();
        let other = (1..=3).find(|&i| i != leader).unwrap();
        c.isolate(other);
        c.run_for(5000); // many election timeouts alone
        assert_eq!(
            c.raft(other, 1).term(),
            term,
            "pre-vote must not bump the term"
        );
        c.heal();
        c.run_for(1000);
        assert_eq!(c.leader_of(1), Some(leader));
        assert_eq!(c.raft(leader, 1).term(), term);
    }

    #[test]
    fn restarted_nodes_keep_term_vote_and_log() {
        let mut c = Cluster::new(3, &[1, 2], 4);
        elect(&mut c, 1);
        elect(&mut c, 2);
        for i in 0..5u8 {
            c.propose(1, &[b'x', b'x', b'x', b'x', b'0' + i]);
            c.propose(2, &[b'y', b'y', b'y', b'y', b'0' + i]);
            c.step();
        }
        c.run_for(300);
        for id in 1..=3 {
            c.stop(id);
        }
        for id in 1..=3 {
            c.start(id);
        }
        let l1 = elect(&mut c, 1);
        c.run_for(500);
        assert_eq!(values(&c.nodes[&l1].logs[&1]).len(), 5);
        for g in [1, 2] {
            c.check_committed_prefixes_agree(g);
        }
    }

    #[test]
    fn one_heartbeat_envelope_per_peer_for_many_groups() {
        let groups: Vec<GroupId> = (1..=20).collect();
        let mut c = Cluster::new(3, &groups, 5);
        c.run_for(3000);
        // Every group has a leader; heartbeats of all groups a node leads share frames.
        for &g in &groups {
            assert!(c.leader_of(g).is_some(), "group {g} has no leader");
        }
        let leader = c.leader_of(1).unwrap();
        let node = c.nodes.get_mut(&leader).unwrap().node.as_mut().unwrap();
        let tick = node.next_deadline();
        node.on_tick(tick);
        let ready = node.take_ready();
        assert_eq!(ready.envelopes.len(), 2, "one envelope per peer");
        let led = node
            .groups()
            .filter(|(_, r)| r.role() == Role::Leader)
            .count();
        assert!(ready.envelopes.iter().all(|(_, e)| e.items.len() >= led));
    }

    /// Raft's figure 8: a leader must not commit an entry of an earlier term by counting
    /// its replicas, or a later leader may overwrite it. Builds the situation step by step
    /// and returns every commit index the re-elected old leader goes through, plus the
    /// end of the old-term entry.
    fn figure_8(tweak: fn(&mut RaftConfig)) -> (Vec<Offset>, Offset, Offset) {
        let mut c = Cluster::new(3, &[1], 8);
        c.restart_all_with(tweak);
        let a = elect(&mut c, 1);
        c.run_for(200);
        // `a` appends y alone.
        c.isolate(a);
        let now = c.now;
        let (y_base, y_end) = c
            .raft_mut(a, 1)
            .propose(now, build::batch(&[b"old-y"], 0))
            .unwrap();
        // A new leader b is elected by the others, and cut off at once.
        let b = loop {
            c.step();
            if let Some(l) = c
                .leader_of(1)
                .filter(|&l| l != a && c.raft(l, 1).role() == Role::Leader)
            {
                break l;
            }
        };
        c.isolate(b);
        let other = (1..=3).find(|&i| i != a && i != b).unwrap();
        // a and the third node reconnect; a wins a later term with its longer log.
        c.heal();
        c.isolate(b);
        let mut commits = Vec::new();
        for _ in 0..4000 {
            c.step();
            if c.raft(a, 1).role() == Role::Leader && c.raft(a, 1).term() > c.raft(b, 1).term() {
                commits.push(c.raft(a, 1).commit());
            }
            if c.raft(a, 1).commit() > y_end {
                break;
            }
        }
        assert!(
            c.raft(other, 1).end() > y_end,
            "the scenario ran: the old entry and a new one were replicated"
        );
        (commits, y_base, y_end)
    }

    #[test]
    fn an_old_term_entry_commits_only_with_one_of_the_current_term() {
        // One batch per Append: the follower acknowledges the old entry before the new
        // leader's own batch, which is the moment the rule matters.
        let (commits, y_base, y_end) = figure_8(|cfg| cfg.max_append_bytes = 1);
        assert!(!commits.is_empty(), "a must lead again");
        assert!(
            commits.iter().all(|&c| c <= y_base || c > y_end),
            "commit stopped at the end of an old-term entry: {commits:?} (y {y_base}..{y_end})"
        );
    }

    #[cfg(feature = "inject-bugs")]
    #[test]
    fn without_the_rule_the_old_term_entry_is_committed_by_counting() {
        let (commits, _, y_end) = figure_8(|cfg| {
            cfg.max_append_bytes = 1;
            cfg.bugs.commit_old_term = true;
        });
        assert!(commits.contains(&y_end), "the bug must show: {commits:?}");
    }

    #[test]
    fn the_controller_group_gives_every_broker_the_same_metadata() {
        use crate::controller::{self, CONTROLLER_GROUP, ClusterMetadata, MetadataCommand};
        let mut c = Cluster::new(3, &[CONTROLLER_GROUP], 9);
        let leader = elect(&mut c, CONTROLLER_GROUP);
        let mut cmds: Vec<MetadataCommand> = (1..=3)
            .map(|id| MetadataCommand::RegisterBroker {
                id,
                host: format!("10.0.0.{id}"),
                port: 9092,
            })
            .collect();
        let partitions = controller::assign_replicas(&[1, 2, 3], 6, 3, 0).unwrap();
        cmds.push(MetadataCommand::CreateTopic {
            name: "orders".into(),
            id: [7; 16],
            partitions,
            configs: vec![],
        });
        for cmd in &cmds {
            let now = c.now;
            c.raft_mut(leader, CONTROLLER_GROUP)
                .propose(now, controller::encode_command(cmd, 0))
                .unwrap();
            c.step();
        }
        c.run_for(500);
        let applied: Vec<ClusterMetadata> = (1..=3)
            .map(|id| {
                let commit = c.raft(id, CONTROLLER_GROUP).commit();
                let mut m = ClusterMetadata::default();
                for b in &c.nodes[&id].logs[&CONTROLLER_GROUP].batches {
                    let h = BatchHeader::parse(b).unwrap();
                    let end = h.last_offset() as u64 + 1;
                    if end <= commit {
                        m.apply_batch(b, end).unwrap();
                    }
                }
                m
            })
            .collect();
        assert_eq!(applied[0].topics["orders"].partitions.len(), 6);
        assert_eq!(applied[0].brokers.len(), 3);
        assert!(
            applied.iter().all(|m| m == &applied[0]),
            "replicas disagree on metadata"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// Random partitions, heals, restarts and proposals on 3 or 5 nodes: committed
        /// batches never change and agree across nodes, at most one leader per term
        /// (asserted on every step), and after healing every group commits again.
        #[test]
        fn random_faults_keep_raft_safe_and_live(
            seed in proptest::prelude::any::<u64>(),
            five in proptest::prelude::any::<bool>(),
            ops in proptest::collection::vec((0u8..7, 0u32..5, 0u64..400), 1..50),
        ) {
            let n = if five { 5 } else { 3 };
            let mut c = Cluster::new(n, &[1, 2], seed);
            for (kind, who, ms) in ops {
                let node = who % n + 1;
                match kind {
                    0 => c.isolate(node),
                    1 => c.heal(),
                    2 => {
                        c.stop(node);
                        c.start(node);
                    }
                    3 => {
                        let g = 1 + who % 2;
                        if let Some(l) = c.leader_of(g) {
                            let now = c.now;
                            let to = (l % n + 1 + (ms as u32 % 2)) % n + 1;
                            let to = if to == l { None } else { Some(to) };
                            c.raft_mut(l, g).transfer_leadership(now, to);
                        }
                    }
                    _ => {
                        let _ = c.propose(1 + who % 2, b"value");
                    }
                }
                c.run_for(ms + 1);
                c.check_committed_prefixes_agree(1);
                c.check_committed_prefixes_agree(2);
            }
            c.heal();
            c.run_for(3_000);
            for g in [1, 2] {
                let before = c.nodes.keys().map(|&id| c.raft(id, g).commit()).max().unwrap();
                let mut done = false;
                for _ in 0..50 {
                    if c.propose(g, b"after").is_some() {
                        c.run_for(300);
                        if c.leader_of(g).is_some_and(|l| c.raft(l, g).commit() > before) {
                            done = true;
                            break;
                        }
                    }
                    c.run_for(100);
                }
                proptest::prop_assert!(done, "group {} commits nothing after healing", g);
                c.check_committed_prefixes_agree(g);
            }
        }
    }

    #[test]
    fn a_leader_with_corrupt_storage_hands_over_and_never_campaigns_again() {
        let mut c = Cluster::new(3, &[1], 10);
        let bad = elect(&mut c, 1);
        let now = c.now;
        c.raft_mut(bad, 1).on_storage_corrupt(now);
        assert_ne!(c.raft(bad, 1).role(), Role::Leader);
        c.run_for(2_000);
        let good = c.leader_of(1).expect("a sound replica leads");
        assert_ne!(good, bad);
        let (_, end) = c.propose(1, b"after").unwrap();
        c.run_for(300);
        assert!(
            c.raft(bad, 1).commit() >= end,
            "the damaged replica still follows"
        );
        // Even when the sound leader goes away, the damaged node does not take over.
        c.isolate(good);
        c.run_for(5_000);
        assert_ne!(c.raft(bad, 1).role(), Role::Leader);
        let third = (1..=3).find(|&i| i != good && i != bad).unwrap();
        assert_eq!(
            c.raft(third, 1).role(),
            Role::Leader,
            "the third node leads with the damaged node's vote"
        );
    }

    /// Leadership transfer: the target leads the next term within a few round trips
    /// (no election timeout waited out), and every committed value is there.
    #[test]
    fn a_transfer_hands_leadership_to_the_target_at_the_next_term() {
        let mut c = Cluster::new(3, &[1], 11);
        let leader = elect(&mut c, 1);
        let term = c.raft(leader, 1).term();
        let target = (1..=3).find(|&i| i != leader).unwrap();
        for i in 0..10u8 {
            c.propose(1, &[b'v', b'a', b'l', b'0', b'0' + i]).unwrap();
        }
        let now = c.now;
        assert!(c.raft_mut(leader, 1).transfer_leadership(now, Some(target)));
        assert_eq!(c.raft(leader, 1).transferring_to(), Some(target));
        assert!(
            c.propose(1, b"held0").is_none(),
            "no proposal while handing over"
        );
        c.run_for(100); // well under the minimum election timeout (300 ms)
        assert_eq!(c.leader_of(1), Some(target));
        assert_eq!(c.raft(target, 1).term(), term + 1);
        assert_eq!(c.raft(leader, 1).role(), Role::Follower);
        let (_, end) = c.propose(1, b"after").unwrap();
        c.run_for(200);
        for id in 1..=3 {
            assert_eq!(c.raft(id, 1).commit(), end, "node {id}");
            assert_eq!(values(&c.nodes[&id].logs[&1]).len(), 11, "node {id}");
        }
        c.check_committed_prefixes_agree(1);
    }

    /// A target that lags catches up first; one that never answers leaves the leader
    /// leading on after an election timeout, proposals accepted again.
    #[test]
    fn a_transfer_waits_for_the_target_and_gives_up_on_a_dead_one() {
        let mut c = Cluster::new(3, &[1], 12);
        let leader = elect(&mut c, 1);
        let lagging = (1..=3).find(|&i| i != leader).unwrap();
        c.isolate(lagging);
        for i in 0..5u8 {
            c.propose(1, &[b'l', b'a', b'g', b'0', b'0' + i]).unwrap();
            c.run_for(10);
        }
        c.heal();
        let now = c.now;
        assert!(
            c.raft_mut(leader, 1)
                .transfer_leadership(now, Some(lagging))
        );
        c.run_for(500);
        assert_eq!(c.leader_of(1), Some(lagging));
        assert_eq!(values(&c.nodes[&lagging].logs[&1]).len(), 5);

        let leader = lagging;
        let term = c.raft(leader, 1).term();
        let dead = (1..=3).find(|&i| i != leader).unwrap();
        c.isolate(dead); // also drops its answers in flight
        let now = c.now;
        assert!(c.raft_mut(leader, 1).transfer_leadership(now, Some(dead)));
        c.run_for(400);
        assert!(c.propose(1, b"held0").is_none(), "still handing over");
        c.run_for(300);
        assert_eq!(c.raft(leader, 1).transferring_to(), None, "dropped");
        assert_eq!(c.leader_of(1), Some(leader));
        assert_eq!(c.raft(leader, 1).term(), term);
        assert!(c.propose(1, b"again").is_some());
        // Nobody to hand to: not a voter, or not the leader.
        let now = c.now;
        assert!(!c.raft_mut(leader, 1).transfer_leadership(now, Some(9)));
        let other = (1..=3).find(|&i| i != leader && i != dead).unwrap();
        assert!(!c.raft_mut(other, 1).transfer_leadership(now, None));
    }

    /// TimeoutNow counts only from the leader a replica follows, in its term.
    #[test]
    fn timeout_now_from_anyone_but_the_leader_starts_nothing() {
        let mut c = Cluster::new(3, &[1], 13);
        let leader = elect(&mut c, 1);
        let term = c.raft(leader, 1).term();
        let a = (1..=3).find(|&i| i != leader).unwrap();
        let b = (1..=3).find(|&i| i != leader && i != a).unwrap();
        let now = c.now;
        c.raft_mut(a, 1)
            .on_message(now, b, Message::TimeoutNow { term });
        c.raft_mut(a, 1)
            .on_message(now, leader, Message::TimeoutNow { term: term - 1 });
        assert_eq!(c.raft(a, 1).role(), Role::Follower);
        assert_eq!(c.raft(a, 1).term(), term);
        c.run_for(200);
        assert_eq!(c.leader_of(1), Some(leader));
        assert_eq!(c.raft(leader, 1).term(), term);
    }

    #[test]
    fn a_single_replica_group_commits_on_its_own_fsync() {
        let mut c = Cluster::new(1, &[1], 6);
        c.step();
        let l = c
            .leader_of(1)
            .expect("a group of one leads at its first tick");
        let (_, end) = c.propose(1, b"solo0").unwrap();
        c.step();
        assert_eq!(c.raft(l, 1).commit(), end);
        assert_eq!(c.raft(l, 1).read_high_watermark(c.now), Some(end));
    }

    /// A group of one (a single broker's partition) leads at its first tick, writes no
    /// control batch (offsets start at 0 and do not shift on restart), commits what it
    /// made durable, and after a restart has everything it held committed at once.
    #[test]
    fn group_of_one_leads_at_once_and_commits_its_durable_log() {
        use crate::raft::{HardState, LogState, Raft, RaftConfig, StorageOp};
        let mut r = Raft::new(
            RaftConfig::new(1, vec![1], 7),
            HardState::default(),
            LogState::default(),
            1000,
        );
        r.on_tick(1000);
        assert_eq!(r.role(), crate::raft::Role::Leader);
        let ready = r.take_ready();
        assert_eq!(ready.hard_state.map(|h| h.term), Some(1));
        assert!(
            ready.storage.is_empty(),
            "no control batch for a group of one"
        );
        let (base, end) = r.propose(1000, build::batch(&[b"v"], 0)).unwrap();
        assert_eq!((base, end), (0, 1));
        let ready = r.take_ready();
        assert!(matches!(ready.storage.as_slice(), [StorageOp::AppendOwn(b)] if b.len() == 1));
        assert_eq!(r.commit(), 0, "nothing is committed before it is durable");
        r.on_persisted(1000, end);
        assert_eq!(r.commit(), 1);
        assert_eq!(r.read_high_watermark(1000), Some(1));

        // Restart over a log of 5 entries from term 1.
        let mut epochs = EpochCache::new();
        epochs.record(1, 0);
        let log = LogState {
            start: 0,
            end: 5,
            epochs,
        };
        let mut r = Raft::new(
            RaftConfig::new(1, vec![1], 7),
            HardState {
                term: 1,
                voted_for: Some(1),
            },
            log,
            0,
        );
        r.on_tick(0);
        assert_eq!(r.term(), 2);
        assert_eq!(r.commit(), 5);
        assert_eq!(r.read_high_watermark(0), Some(5));
        // Damage found in its log does not silence it: there is no other copy to lead.
        r.on_storage_corrupt(0);
        assert_eq!(r.role(), crate::raft::Role::Leader);
        r.on_tick(10_000);
        assert_eq!(r.role(), crate::raft::Role::Leader);
        assert!(r.propose(10_000, build::batch(&[b"w"], 0)).is_ok());
    }
}
