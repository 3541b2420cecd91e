//! What a workload needs from a system under test, and the Kafka-protocol implementation
//! (corelog, tansu, Apache Kafka, Redpanda). NATS JetStream and Redis Streams implement the
//! same traits in `nats.rs` and `redis_streams.rs`, so every system runs the very same
//! open-loop schedule and latency accounting in `run.rs`.

use std::io::BufReader;

use bytes::Bytes;
use corelog_storage::batch::{self, BatchHeader, build};

use crate::kafka::{self, Client, Pipeline};

/// A record batch's header (Kafka RecordBatch v2).
pub const BATCH_OVERHEAD: usize = batch::HEADER_LEN;

/// How long any driver waits for an answer it is owed before the run fails.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a consumer begins.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum From {
    /// The first message of the topic (reading a backlog).
    Beginning,
    /// Messages published after the consumer starts.
    End,
}

/// A publishing half and the acknowledgements' half of one connection.
pub type ProducerPair = (Box<dyn Publisher>, Box<dyn Acks>);

pub trait Driver: Send + Sync {
    /// Creates the topic (or the peer's equivalent: streams, keys) with `partitions` parts.
    fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String>;
    /// A publishing connection: the caller sends batches on the first half while a thread
    /// of its own takes acknowledgements from the second.
    fn producer(&self, topic: &str) -> Result<ProducerPair, String>;
    /// A consumer of every partition of `topic` (one per consumer group).
    fn consumer(
        &self,
        topic: &str,
        partitions: i32,
        from: From,
    ) -> Result<Box<dyn Consumer>, String>;
}

pub trait Publisher: Send {
    /// Sends `values` to `partition` as one batch tagged `tag` (0, 1, 2, ... per
    /// publisher); returns without waiting for the acknowledgement.
    fn publish(&mut self, tag: u64, partition: i32, values: &[Vec<u8>]) -> Result<(), String>;
}

pub trait Acks: Send {
    /// Blocks until one more batch is acknowledged in full; returns its tag and, if the
    /// system refused any of it, what it said.
    fn next(&mut self) -> Result<(u64, Option<String>), String>;
}

/// A Kafka error code as its name, e.g. "10 MESSAGE_TOO_LARGE".
pub fn kafka_error(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        Some(e) => format!("Kafka error {code} ({e:?}: {e})"),
        None => "no error".into(),
    }
}

pub trait Consumer: Send {
    /// Waits up to about 100 ms for messages and hands each value to `each`; returns how
    /// many there were.
    fn poll(&mut self, each: &mut dyn FnMut(&[u8])) -> Result<u64, String>;
}

/// Any Kafka-compatible broker, or a cluster of them.
pub struct Kafka {
    /// Bootstrap servers, comma-separated.
    pub addr: String,
    pub acks: i16,
    /// Batch codec of the producers (Kafka attribute bits: 0 none .. 4 zstd).
    pub codec: u8,
    pub topic_configs: std::collections::BTreeMap<String, String>,
    pub replication_factor: i16,
    /// Each topic's partition leaders (Kafka addresses), learnt once it is created: a
    /// client sends a partition's produce and fetch to its leader, as Kafka clients do.
    pub leaders: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
}

impl Kafka {
    pub fn new(
        addr: &str,
        acks: i16,
        codec: u8,
        topic_configs: std::collections::BTreeMap<String, String>,
        replication_factor: i16,
    ) -> Self {
        Self {
            addr: addr.to_string(),
            acks,
            codec,
            topic_configs,
            replication_factor,
            leaders: Default::default(),
        }
    }

    fn leaders_of(&self, topic: &str) -> Result<Vec<String>, String> {
        self.leaders
            .lock()
            .expect("not poisoned")
            .get(topic)
            .cloned()
            .ok_or_else(|| format!("{topic}: not created by this driver"))
    }

    /// The distinct leaders, and for each partition the index of its leader among them.
    fn routes(&self, topic: &str) -> Result<(Vec<String>, Vec<usize>), String> {
        let leaders = self.leaders_of(topic)?;
        let mut distinct: Vec<String> = Vec::new();
        let route = leaders
            .iter()
            .map(|l| match distinct.iter().position(|d| d == l) {
                Some(i) => i,
                None => {
                    distinct.push(l.clone());
                    distinct.len() - 1
                }
            })
            .collect();
        Ok((distinct, route))
    }
}

/// A codec's name as a Kafka batch attribute ("" and "none" are 0).
pub fn codec_id(name: &str) -> Result<u8, String> {
    match name {
        "" | "none" => Ok(0),
        "gzip" => Ok(1),
        "snappy" => Ok(2),
        "lz4" => Ok(3),
        "zstd" => Ok(4),
        other => Err(format!(
            "producer codec {other:?}: expected none, gzip, snappy, lz4 or zstd"
        )),
    }
}

/// The records section compressed as a client library would (librdkafka's defaults:
/// gzip level 6, raw snappy, an LZ4 frame, zstd level 3).
fn compress(codec: u8, records: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let e = |e: std::io::Error| e.to_string();
    Ok(match codec {
        1 => {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(records).map_err(e)?;
            z.finish().map_err(e)?
        }
        2 => snap::raw::Encoder::new()
            .compress_vec(records)
            .map_err(|x| x.to_string())?,
        3 => {
            let mut z = lz4_flex::frame::FrameEncoder::new(Vec::new());
            z.write_all(records).map_err(e)?;
            z.finish().map_err(|x| x.to_string())?
        }
        4 => zstd::bulk::compress(records, 3).map_err(e)?,
        _ => records.to_vec(),
    })
}

/// A batch's records section decompressed, as a consumer does (snappy raw or, as Kafka's
/// broker writes it, xerial-framed).
fn decompress(codec: u8, data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let e = |e: std::io::Error| e.to_string();
    match codec {
        1 => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(e)?;
        }
        2 if data.starts_with(b"\x82SNAPPY\x00") => {
            let mut rest = data.get(16..).unwrap_or_default();
            while rest.len() >= 4 {
                let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                let block = rest.get(4..4 + len).ok_or("truncated xerial block")?;
                out.extend(
                    snap::raw::Decoder::new()
                        .decompress_vec(block)
                        .map_err(|x| x.to_string())?,
                );
                rest = &rest[4 + len..];
            }
        }
        2 => {
            out = snap::raw::Decoder::new()
                .decompress_vec(data)
                .map_err(|x| x.to_string())?
        }
        3 => {
            lz4_flex::frame::FrameDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(e)?;
        }
        4 => out = zstd::stream::decode_all(data).map_err(e)?,
        c => return Err(format!("unknown codec {c}")),
    }
    Ok(out)
}

impl Driver for Kafka {
    fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        let mut client = Client::bootstrap(&self.addr)?;
        client.create_topic(
            topic,
            partitions,
            self.replication_factor,
            &self.topic_configs,
        )?;
        let leaders = client.leaders(topic, partitions, std::time::Duration::from_secs(30))?;
        self.leaders
            .lock()
            .expect("not poisoned")
            .insert(topic.to_string(), leaders);
        Ok(())
    }

    fn producer(&self, topic: &str) -> Result<ProducerPair, String> {
        let (leaders, route) = self.routes(topic)?;
        let publisher = |pipes| KafkaPublisher {
            pipes,
            route: route.clone(),
            topic: topic.to_string(),
            acks: self.acks,
            codec: self.codec,
        };
        if let [leader] = &leaders[..] {
            // One broker leads everything: its answers come back in order on the one
            // connection, read directly.
            let (pipe, reader) = Pipeline::connect(leader)?;
            let acks = Box::new(KafkaAcks { reader, next: 0 });
            return Ok((Box::new(publisher(vec![(pipe, None)])), acks));
        }
        // A connection per leader, each answering in its own order: a reader thread per
        // connection pairs its answers with the tags sent on it and merges them into one
        // stream (the run's ack accounting takes acks in any order, as for NATS).
        let (merged_tx, merged) = std::sync::mpsc::channel();
        let mut pipes = Vec::new();
        for leader in &leaders {
            let (pipe, mut reader) = Pipeline::connect(leader)?;
            let (tags_tx, tags) = std::sync::mpsc::channel::<u64>();
            let merged_tx = merged_tx.clone();
            std::thread::spawn(move || {
                while let Ok(tag) = tags.recv() {
                    let r = kafka::read_produce_ack(&mut reader)
                        .map(|e| (tag, (e != 0).then(|| kafka_error(e))));
                    let failed = r.is_err();
                    if merged_tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
            pipes.push((pipe, Some(tags_tx)));
        }
        Ok((Box::new(publisher(pipes)), Box::new(MergedAcks { merged })))
    }

    fn consumer(
        &self,
        topic: &str,
        partitions: i32,
        from: From,
    ) -> Result<Box<dyn Consumer>, String> {
        let (leaders, route) = self.routes(topic)?;
        // Each leader's partitions, from where this consumer starts.
        let mut parts: Vec<Vec<(i32, i64)>> = Vec::new();
        let mut clients = Vec::new();
        for (i, leader) in leaders.iter().enumerate() {
            let mut client = Client::connect(leader)?;
            let mine: Vec<i32> = (0..partitions)
                .filter(|&p| route[p as usize] == i)
                .collect();
            parts.push(match from {
                From::Beginning => mine.iter().map(|&p| (p, 0)).collect(),
                From::End => client.end_offsets_of(topic, &mine)?,
            });
            clients.push(client);
        }
        if clients.len() == 1 {
            return Ok(Box::new(KafkaConsumer {
                client: clients.pop().expect("one"),
                topic: topic.to_string(),
                offsets: parts.pop().expect("one"),
            }));
        }
        // Several leaders: a long-polling fetcher thread per leader, so a record on one
        // is not held up behind another's wait; poll takes what any of them brought.
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for (client, offsets) in clients.into_iter().zip(parts) {
            let mut fetcher = KafkaConsumer {
                client,
                topic: topic.to_string(),
                offsets,
            };
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = fetcher.fetch_once();
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        Ok(Box::new(FanInConsumer { rx, stop }))
    }
}

struct KafkaPublisher {
    /// A connection per leader; with several, the sender of the tags sent on each.
    pipes: Vec<(Pipeline, Option<std::sync::mpsc::Sender<u64>>)>,
    /// Partition → index in `pipes`.
    route: Vec<usize>,
    topic: String,
    acks: i16,
    codec: u8,
}

impl Publisher for KafkaPublisher {
    fn publish(&mut self, tag: u64, partition: i32, values: &[Vec<u8>]) -> Result<(), String> {
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let mut b = build::batch(&refs, 0);
        if self.codec != 0 {
            let records = compress(self.codec, &b[batch::HEADER_LEN..])?;
            b = batch::rewrap(&b, self.codec, &records);
        }
        let i = *self
            .route
            .get(partition as usize)
            .ok_or_else(|| format!("no partition {partition}"))?;
        let (pipe, tags) = &mut self.pipes[i];
        if let Some(tags) = tags {
            tags.send(tag)
                .map_err(|_| "the connection's answer reader stopped".to_string())?;
        }
        pipe.produce(&self.topic, partition, self.acks, Bytes::from(b))
    }
}

/// Answers of several connections, merged.
struct MergedAcks {
    merged: std::sync::mpsc::Receiver<Result<(u64, Option<String>), String>>,
}

impl Acks for MergedAcks {
    fn next(&mut self) -> Result<(u64, Option<String>), String> {
        self.merged
            .recv()
            .map_err(|_| "every connection's answer reader stopped".to_string())?
    }
}

/// Fetched data of several leaders: (partition, offset asked for, records).
type Fetched = Result<Vec<(i32, i64, Bytes)>, String>;

struct FanInConsumer {
    rx: std::sync::mpsc::Receiver<Fetched>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for FanInConsumer {
    fn drop(&mut self) {
        // The fetchers end after their current long poll (or at their next send).
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Consumer for FanInConsumer {
    fn poll(&mut self, each: &mut dyn FnMut(&[u8])) -> Result<u64, String> {
        let first = match self.rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Ok(0),
            Err(_) => return Err("every fetcher stopped".into()),
        };
        let mut n = 0;
        let mut next = Some(first);
        while let Some(r) = next {
            for (p, from, records) in r? {
                n += values(p, from, &records, each)?;
            }
            next = self.rx.try_recv().ok();
        }
        Ok(n)
    }
}

/// Hands each value of `records` at or after offset `from` to `each`; returns how many.
fn values(p: i32, from: i64, records: &[u8], each: &mut dyn FnMut(&[u8])) -> Result<u64, String> {
    let mut n = 0;
    let mut rest = records;
    while let Ok(h) = BatchHeader::parse(rest) {
        if h.size > rest.len() {
            break;
        }
        let plain;
        let bytes = if h.compression() == 0 {
            &rest[..h.size]
        } else {
            let records = decompress(h.compression(), &rest[batch::HEADER_LEN..h.size])
                .map_err(|e| format!("partition {p}: {e}"))?;
            plain = batch::rewrap(&rest[..h.size], 0, &records);
            &plain[..]
        };
        let records = batch::records(bytes)
            .ok_or_else(|| format!("partition {p}: a batch the bench cannot read"))?;
        for (i, r) in records.iter().enumerate() {
            if h.base_offset + (i as i64) < from {
                continue;
            }
            n += 1;
            each(r.value.unwrap_or_default());
        }
        rest = &rest[h.size..];
    }
    Ok(n)
}

/// The offset after the last whole batch of `records`, or `from` if there is none.
fn next_offset(from: i64, records: &[u8]) -> i64 {
    let mut next = from;
    let mut rest = records;
    while let Ok(h) = BatchHeader::parse(rest) {
        if h.size > rest.len() {
            break;
        }
        next = next.max(h.last_offset() + 1);
        rest = &rest[h.size..];
    }
    next
}

/// Produce answers come back in request order on one connection.
struct KafkaAcks {
    reader: BufReader<crate::tls::ReadHalf>,
    next: u64,
}

impl Acks for KafkaAcks {
    fn next(&mut self) -> Result<(u64, Option<String>), String> {
        let error = kafka::read_produce_ack(&mut self.reader)?;
        self.next += 1;
        Ok((self.next - 1, (error != 0).then(|| kafka_error(error))))
    }
}

struct KafkaConsumer {
    client: Client,
    topic: String,
    offsets: Vec<(i32, i64)>,
}

impl KafkaConsumer {
    /// One fetch: (partition, offset asked for, records) of each partition that had any;
    /// the offsets move past what came.
    fn fetch_once(&mut self) -> Fetched {
        let mut out = Vec::new();
        for (p, error, records) in self.client.fetch(&self.topic, &self.offsets, 100)? {
            if error != 0 {
                return Err(format!("fetch error {error} on partition {p}"));
            }
            let slot = self
                .offsets
                .iter_mut()
                .find(|(q, _)| *q == p)
                .ok_or_else(|| format!("fetch answered partition {p}, not asked for"))?;
            let from = slot.1;
            slot.1 = next_offset(from, &records);
            if !records.is_empty() {
                out.push((p, from, records));
            }
        }
        Ok(out)
    }
}

impl Consumer for KafkaConsumer {
    fn poll(&mut self, each: &mut dyn FnMut(&[u8])) -> Result<u64, String> {
        let mut n = 0;
        for (p, from, records) in self.fetch_once()? {
            n += values(p, from, &records, each)?;
        }
        Ok(n)
    }
}
