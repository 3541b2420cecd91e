//! What a workload needs from a system under test, and the Kafka-protocol implementation
//! (corelog, tansu, Apache Kafka, Redpanda). NATS JetStream and Redis Streams implement the
//! same traits in `nats.rs` and `redis_streams.rs`, so every system runs the very same
//! open-loop schedule and latency accounting in `run.rs`.

use std::io::BufReader;
use std::net::TcpStream;

use bytes::Bytes;
use corelog_storage::batch::{self, BatchHeader, build};

use crate::kafka::{self, Client, Pipeline};

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
    /// Blocks until one more batch is acknowledged in full; returns its tag and whether
    /// the system refused any of it.
    fn next(&mut self) -> Result<(u64, bool), String>;
}

pub trait Consumer: Send {
    /// Waits up to about 100 ms for messages and hands each value to `each`; returns how
    /// many there were.
    fn poll(&mut self, each: &mut dyn FnMut(&[u8])) -> Result<u64, String>;
}

/// Any Kafka-compatible broker.
pub struct Kafka {
    pub addr: String,
    pub acks: i16,
    /// Batch codec of the producers (Kafka attribute bits: 0 none .. 4 zstd).
    pub codec: u8,
    pub topic_configs: std::collections::BTreeMap<String, String>,
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
        Client::connect(&self.addr)?.create_topic(topic, partitions, &self.topic_configs)
    }

    fn producer(&self, topic: &str) -> Result<ProducerPair, String> {
        let (pipe, reader) = Pipeline::connect(&self.addr)?;
        Ok((
            Box::new(KafkaPublisher {
                pipe,
                topic: topic.to_string(),
                acks: self.acks,
                codec: self.codec,
            }),
            Box::new(KafkaAcks { reader, next: 0 }),
        ))
    }

    fn consumer(
        &self,
        topic: &str,
        partitions: i32,
        from: From,
    ) -> Result<Box<dyn Consumer>, String> {
        let mut client = Client::connect(&self.addr)?;
        let starts = match from {
            From::Beginning => vec![0; partitions as usize],
            From::End => client.end_offsets(topic, partitions)?,
        };
        Ok(Box::new(KafkaConsumer {
            client,
            topic: topic.to_string(),
            offsets: starts
                .into_iter()
                .enumerate()
                .map(|(p, o)| (p as i32, o))
                .collect(),
        }))
    }
}

struct KafkaPublisher {
    pipe: Pipeline,
    topic: String,
    acks: i16,
    codec: u8,
}

impl Publisher for KafkaPublisher {
    fn publish(&mut self, _tag: u64, partition: i32, values: &[Vec<u8>]) -> Result<(), String> {
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let mut b = build::batch(&refs, 0);
        if self.codec != 0 {
            let records = compress(self.codec, &b[batch::HEADER_LEN..])?;
            b = batch::rewrap(&b, self.codec, &records);
        }
        self.pipe
            .produce(&self.topic, partition, self.acks, Bytes::from(b))
    }
}

/// Produce answers come back in request order on one connection.
struct KafkaAcks {
    reader: BufReader<TcpStream>,
    next: u64,
}

impl Acks for KafkaAcks {
    fn next(&mut self) -> Result<(u64, bool), String> {
        let error = kafka::read_produce_ack(&mut self.reader)?;
        self.next += 1;
        Ok((self.next - 1, error != 0))
    }
}

struct KafkaConsumer {
    client: Client,
    topic: String,
    offsets: Vec<(i32, i64)>,
}

impl Consumer for KafkaConsumer {
    fn poll(&mut self, each: &mut dyn FnMut(&[u8])) -> Result<u64, String> {
        let mut n = 0;
        for (p, error, records) in self.client.fetch(&self.topic, &self.offsets, 100)? {
            if error != 0 {
                return Err(format!("fetch error {error} on partition {p}"));
            }
            let slot = self
                .offsets
                .iter_mut()
                .find(|(q, _)| *q == p)
                .ok_or_else(|| format!("fetch answered partition {p}, not asked for"))?;
            let mut rest = &records[..];
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
                    if h.base_offset + (i as i64) < slot.1 {
                        continue;
                    }
                    n += 1;
                    each(r.value.unwrap_or_default());
                }
                slot.1 = slot.1.max(h.last_offset() + 1);
                rest = &rest[h.size..];
            }
        }
        Ok(n)
    }
}
