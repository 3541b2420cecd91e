//! A shard's side of a scrape: its snapshot, and shard 0 gathering everyone's.

use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;

use super::{BrokerInfo, Committed, PartitionRow, Snapshot};
use crate::shard::{Shard, ShardMsg};

impl Shard {
    /// This shard's counters, partitions and groups as they are now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let me = self.cfg.node_id;
        let views = self.views.borrow();
        let topics = self.topics.borrow();
        let internal = self.internal.borrow();
        let partitions = self
            .partitions
            .borrow()
            .iter()
            .map(|((topic, partition), h)| {
                let s = h.status.get();
                let meta = topics
                    .get(topic)
                    .or(internal.as_ref().filter(|m| &m.name == topic));
                let replicas = meta
                    .and_then(|m| m.replicas.get(*partition as usize))
                    .map_or(1, Vec::len);
                let (leader, offline, under_replicated) =
                    match (&self.cluster, views.get(&(topic.clone(), *partition))) {
                        // A group of one leads itself once its log is open.
                        (None, _) => (s.is_leader, !s.is_leader, false),
                        (Some(_), None) => (false, true, false),
                        (Some(_), Some(v)) => {
                            let led = v.leader == me;
                            (led, v.leader < 0, led && v.isr.len() < replicas)
                        }
                    };
                PartitionRow {
                    topic: topic.clone(),
                    partition: *partition,
                    size_bytes: s.size_bytes,
                    high_watermark: s.high_watermark,
                    log_start: s.log_start,
                    online: s.online,
                    leader,
                    offline,
                    under_replicated,
                }
            })
            .collect();
        let committed = self
            .groups
            .borrow()
            .values()
            .flat_map(|g| {
                g.offsets.iter().map(|((topic, partition), c)| Committed {
                    group: g.id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    offset: c.offset,
                })
            })
            .collect();
        let exec = glommio::executor().executor_stats();
        Snapshot {
            shard: self.id,
            stats: super::stats(),
            fsync: corelog_storage::fsync_latency(),
            partitions,
            committed,
            connections: self.connections.get(),
            busy: exec.total_runtime(),
            tasks_executed: exec.tasks_executed(),
        }
    }

    /// Every shard's snapshot, this one's first; an error names a shard that did not
    /// answer within `timeout`.
    pub(crate) async fn snapshots(
        self: &Rc<Self>,
        timeout: Duration,
    ) -> Result<Vec<Snapshot>, String> {
        let mut out = vec![self.snapshot()];
        for to in (0..self.count).filter(|&to| to != self.id) {
            let (tx, rx) = oneshot::channel();
            let asked = async {
                self.forward(to, ShardMsg::Observe(tx)).await;
                rx.await.ok()
            };
            let got = futures_lite::future::or(asked, async {
                glommio::timer::sleep(timeout).await;
                None
            })
            .await;
            out.push(got.ok_or_else(|| format!("shard {to} did not answer within {timeout:?}"))?);
        }
        Ok(out)
    }

    pub(crate) fn broker_info(&self) -> BrokerInfo {
        BrokerInfo {
            node_id: self.cfg.node_id,
            clustered: self.cluster.is_some(),
            controller_leader: self.controller_leader.get().map(|n| n as i32),
            brokers: self.brokers.borrow().len(),
        }
    }

    /// Ready: every shard answers, no partition here has failed storage and, on a
    /// cluster, a controller leader is known and every partition here has a leader.
    pub(crate) async fn readiness(self: &Rc<Self>) -> Result<(), String> {
        if self.stopping.get() {
            return Err("shutting down".into());
        }
        let shards = self.snapshots(Duration::from_secs(2)).await?;
        if self.cluster.is_some() && self.controller_leader.get().is_none() {
            return Err("no controller leader known".into());
        }
        let parts = || shards.iter().flat_map(|s| &s.partitions);
        if let Some(p) = parts().find(|p| !p.online) {
            return Err(format!("{}-{}: storage failed", p.topic, p.partition));
        }
        let leaderless = parts().filter(|p| p.offline).count();
        if leaderless > 0 {
            let p = parts().find(|p| p.offline).expect("counted");
            return Err(format!(
                "{leaderless} partition(s) without a leader, e.g. {}-{}",
                p.topic, p.partition
            ));
        }
        Ok(())
    }
}
