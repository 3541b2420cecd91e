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
}

impl Driver for Kafka {
    fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        Client::connect(&self.addr)?.create_topic(topic, partitions)
    }

    fn producer(&self, topic: &str) -> Result<ProducerPair, String> {
        let (pipe, reader) = Pipeline::connect(&self.addr)?;
        Ok((
            Box::new(KafkaPublisher {
                pipe,
                topic: topic.to_string(),
                acks: self.acks,
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
}

impl Publisher for KafkaPublisher {
    fn publish(&mut self, _tag: u64, partition: i32, values: &[Vec<u8>]) -> Result<(), String> {
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let b = build::batch(&refs, 0);
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
                // The bench produces uncompressed batches; anything else is not ours.
                let records = batch::records(&rest[..h.size])
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
