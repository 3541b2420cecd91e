//! What the broker counts and how an operator reads it: `GET /metrics` (Prometheus text),
//! `/health` and `/ready` on the `metrics_listen` address (http.rs).
//!
//! Each shard counts in its own thread-local [`Stats`]: a request's count, latency and
//! error codes, bytes in and out per topic, leader changes. Nothing on the request path
//! takes a lock or an atomic. A scrape asks every shard for a [`Snapshot`] (its counters
//! plus what it can read off its partitions and groups) over the shard channels, and
//! merges them (prometheus.rs).

pub mod errors;
mod gather;
pub mod http;
mod prometheus;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use corelog_storage::stats::Histogram;
use kafka_protocol::messages::ApiKey;

pub use errors::ErrorCodes;

/// One API's requests on one shard.
#[derive(Debug, Clone, Default)]
pub struct ApiStats {
    pub requests: u64,
    /// From the request's arrival to its answer being ready to send.
    pub latency: Histogram,
    /// Error code -> how many times responses carried it.
    pub errors: BTreeMap<i16, u64>,
}

/// One shard's counters since it started.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// By API key.
    pub apis: BTreeMap<i16, ApiStats>,
    /// Record bytes produced to (accepted) and fetched from each topic by clients.
    pub bytes_in: HashMap<String, u64>,
    pub bytes_out: HashMap<String, u64>,
    /// Times a partition replica on this shard saw a new leader elected.
    pub leader_changes: u64,
}

thread_local! {
    static STATS: RefCell<Stats> = RefCell::new(Stats::default());
}

/// A request was answered (or dropped, for acks=0) after `elapsed`.
pub fn request_done(api: ApiKey, elapsed: Duration) {
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        let a = s.apis.entry(api as i16).or_default();
        a.requests += 1;
        a.latency.record(elapsed.as_secs_f64());
    });
}

/// The codes of a response about to be sent.
pub fn response_codes<R: ErrorCodes>(resp: &R) {
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        let a = s.apis.entry(R::API as i16).or_default();
        resp.each_code(&mut |c| *a.errors.entry(c).or_default() += 1);
    });
}

fn add(map: &mut HashMap<String, u64>, topic: &str, n: usize) {
    match map.get_mut(topic) {
        Some(v) => *v += n as u64,
        None => {
            map.insert(topic.to_string(), n as u64);
        }
    }
}

pub fn bytes_in(topic: &str, n: usize) {
    STATS.with(|s| add(&mut s.borrow_mut().bytes_in, topic, n));
}

pub fn bytes_out(topic: &str, n: usize) {
    if n > 0 {
        STATS.with(|s| add(&mut s.borrow_mut().bytes_out, topic, n));
    }
}

pub fn leader_changed() {
    STATS.with(|s| s.borrow_mut().leader_changes += 1);
}

/// This thread's counters as they are now.
pub fn stats() -> Stats {
    STATS.with(|s| s.borrow().clone())
}

/// One partition replica a shard holds, as its task last reported it.
#[derive(Debug, Clone)]
pub struct PartitionRow {
    pub topic: String,
    pub partition: i32,
    pub size_bytes: u64,
    pub high_watermark: i64,
    pub log_start: i64,
    pub online: bool,
    /// This broker leads it.
    pub leader: bool,
    /// No leader known.
    pub offline: bool,
    /// Led here with fewer in-sync replicas than replicas.
    pub under_replicated: bool,
}

/// A group's committed offset for one partition, on the shard coordinating the group.
#[derive(Debug, Clone)]
pub struct Committed {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Everything one shard tells a scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub shard: usize,
    pub stats: Stats,
    pub fsync: Histogram,
    pub partitions: Vec<PartitionRow>,
    pub committed: Vec<Committed>,
    pub connections: usize,
    /// glommio's own account of the executor: time spent running tasks and polling I/O.
    pub busy: Duration,
    pub tasks_executed: u64,
}

/// What a broker as a whole tells a scrape beside its shards' snapshots.
#[derive(Debug, Clone, Default)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub clustered: bool,
    /// The controller group's leader, when known (a cluster only).
    pub controller_leader: Option<i32>,
    pub brokers: usize,
}

/// The text of `GET /metrics`.
pub fn render(info: BrokerInfo, shards: Vec<Snapshot>) -> String {
    prometheus::render(info, shards)
}
