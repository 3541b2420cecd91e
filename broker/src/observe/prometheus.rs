//! The merged snapshots in Prometheus' text format (0.0.4), through prometheus-client's
//! encoder: names, escaping and histogram buckets are its, not ours.

use std::collections::{BTreeMap, HashMap};

use corelog_storage::stats::Histogram;
use kafka_protocol::messages::ApiKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{BrokerInfo, Snapshot};

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Scrape {
    info: BrokerInfo,
    shards: Vec<Snapshot>,
}

pub fn render(info: BrokerInfo, shards: Vec<Snapshot>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { info, shards }));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|_| key.to_string(), |k| format!("{k:?}"))
}

fn counters(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut d = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(d.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut d = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(d.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histograms(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, Histogram)>,
) -> Result<(), std::fmt::Error> {
    let mut d = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        d.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            h.sum,
            h.count,
            &h.buckets(),
            None,
        )?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let e = &mut e;
        // Per API over all shards.
        let mut requests: BTreeMap<i16, u64> = BTreeMap::new();
        let mut errors: BTreeMap<(i16, i16), u64> = BTreeMap::new();
        let mut latency: BTreeMap<i16, Histogram> = BTreeMap::new();
        let mut bytes_in: BTreeMap<&str, u64> = BTreeMap::new();
        let mut bytes_out: BTreeMap<&str, u64> = BTreeMap::new();
        let mut fsync = Histogram::default();
        let mut leader_changes = 0;
        for s in &self.shards {
            for (&k, a) in &s.stats.apis {
                *requests.entry(k).or_default() += a.requests;
                latency.entry(k).or_default().merge(&a.latency);
                for (&c, &n) in &a.errors {
                    *errors.entry((k, c)).or_default() += n;
                }
            }
            for (t, &n) in &s.stats.bytes_in {
                *bytes_in.entry(t).or_default() += n;
            }
            for (t, &n) in &s.stats.bytes_out {
                *bytes_out.entry(t).or_default() += n;
            }
            fsync.merge(&s.fsync);
            leader_changes += s.stats.leader_changes;
        }
        counters(
            e,
            "corelog_requests",
            "Kafka requests answered, by API",
            requests
                .iter()
                .map(|(&k, &n)| (vec![("api", api_name(k))], n)),
        )?;
        counters(
            e,
            "corelog_request_errors",
            "Error codes in Kafka responses (NONE included), by API and code",
            errors.iter().map(|(&(k, c), &n)| {
                (
                    vec![
                        ("api", api_name(k)),
                        ("error", crate::errors::name(c).to_string()),
                    ],
                    n,
                )
            }),
        )?;
        histograms(
            e,
            "corelog_request_duration_seconds",
            "From a request's arrival to its answer, by API",
            latency
                .into_iter()
                .map(|(k, h)| (vec![("api", api_name(k))], h)),
        )?;
        counters(
            e,
            "corelog_topic_bytes_in",
            "Record bytes clients produced to a topic (accepted batches)",
            bytes_in
                .iter()
                .map(|(t, &n)| (vec![("topic", t.to_string())], n)),
        )?;
        counters(
            e,
            "corelog_topic_bytes_out",
            "Record bytes fetched from a topic by clients",
            bytes_out
                .iter()
                .map(|(t, &n)| (vec![("topic", t.to_string())], n)),
        )?;
        histograms(
            e,
            "corelog_fsync_duration_seconds",
            "fdatasync of partition and controller logs",
            [(Labels::new(), fsync)],
        )?;
        counters(
            e,
            "corelog_leader_elections",
            "New leaders seen by the partition replicas on this broker",
            [(Labels::new(), leader_changes)],
        )?;

        // Partitions this broker holds a replica of (offsets partitions included).
        let mut parts: Vec<_> = self.shards.iter().flat_map(|s| &s.partitions).collect();
        parts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let count =
            |f: fn(&super::PartitionRow) -> bool| parts.iter().filter(|p| f(p)).count() as i64;
        gauges(
            e,
            "corelog_partitions",
            "Partition replicas on this broker",
            [(Labels::new(), parts.len() as i64)],
        )?;
        gauges(
            e,
            "corelog_partitions_led",
            "Partitions this broker leads",
            [(Labels::new(), count(|p| p.leader))],
        )?;
        gauges(
            e,
            "corelog_partitions_under_replicated",
            "Partitions led here with fewer in-sync replicas than replicas",
            [(Labels::new(), count(|p| p.under_replicated))],
        )?;
        gauges(
            e,
            "corelog_partitions_offline",
            "Partitions with a replica here and no leader, or whose storage failed",
            [(Labels::new(), count(|p| p.offline || !p.online))],
        )?;
        let labels = |p: &super::PartitionRow| {
            vec![
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ]
        };
        gauges(
            e,
            "corelog_partition_log_size_bytes",
            "Bytes this broker's replica of a partition holds on disk",
            parts.iter().map(|p| (labels(p), p.size_bytes as i64)),
        )?;
        gauges(
            e,
            "corelog_partition_high_watermark",
            "A partition's high watermark as this broker's replica knows it",
            parts.iter().map(|p| (labels(p), p.high_watermark)),
        )?;
        gauges(
            e,
            "corelog_partition_log_start_offset",
            "A partition's first offset on this broker's replica",
            parts.iter().map(|p| (labels(p), p.log_start)),
        )?;

        // Consumer groups coordinated here: committed offsets, and lag where this broker
        // holds the partition (the same figure `corelog group describe` prints).
        let ends: HashMap<(&str, i32), i64> = parts
            .iter()
            .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
            .collect();
        let mut committed: Vec<_> = self.shards.iter().flat_map(|s| &s.committed).collect();
        committed.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        let group_labels = |c: &super::Committed| {
            vec![
                ("group", c.group.clone()),
                ("topic", c.topic.clone()),
                ("partition", c.partition.to_string()),
            ]
        };
        gauges(
            e,
            "corelog_consumer_group_committed_offset",
            "A group's committed offset, on the broker coordinating the group",
            committed.iter().map(|c| (group_labels(c), c.offset)),
        )?;
        gauges(
            e,
            "corelog_consumer_group_lag",
            "High watermark minus the committed offset (where this broker holds the partition)",
            committed.iter().filter_map(|c| {
                let end = ends.get(&(c.topic.as_str(), c.partition))?;
                Some((group_labels(c), (end - c.offset).max(0)))
            }),
        )?;

        let shard = |s: &Snapshot| vec![("shard", s.shard.to_string())];
        gauges(
            e,
            "corelog_connections",
            "Open Kafka client connections, by shard",
            self.shards.iter().map(|s| (shard(s), s.connections as i64)),
        )?;
        {
            let mut d = e.encode_descriptor(
                "corelog_shard_busy_seconds",
                "Time the shard's executor spent running tasks and polling I/O (glommio's count); its rate is the shard's CPU use",
                None,
                MetricType::Counter,
            )?;
            for s in &self.shards {
                ConstCounter::new(s.busy.as_secs_f64()).encode(d.encode_family(&shard(s))?)?;
            }
        }
        counters(
            e,
            "corelog_shard_tasks_executed",
            "Tasks the shard's executor ran (glommio's count)",
            self.shards.iter().map(|s| (shard(s), s.tasks_executed)),
        )?;

        let i = &self.info;
        gauges(
            e,
            "corelog_broker_info",
            "This broker: node id and whether it is a cluster member (value 1)",
            [(
                vec![
                    ("node_id", i.node_id.to_string()),
                    ("clustered", i.clustered.to_string()),
                ],
                1,
            )],
        )?;
        if i.clustered {
            gauges(
                e,
                "corelog_controller_leader",
                "Node id of the controller group's leader as this broker knows it (-1: none)",
                [(Labels::new(), i.controller_leader.map_or(-1, i64::from))],
            )?;
            gauges(
                e,
                "corelog_brokers",
                "Registered brokers of the cluster as this broker knows them",
                [(Labels::new(), i.brokers as i64)],
            )?;
        }
        Ok(())
    }
}
