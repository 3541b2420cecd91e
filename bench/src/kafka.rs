//! A small blocking Kafka client for load generation: just what the benchmark needs
//! (create a topic, pipelined produce, fetch, list offsets), on the Kafka wire codec.
//! Works against any Kafka-compatible broker.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

pub const PRODUCE_VERSION: i16 = 7;
pub const FETCH_VERSION: i16 = 11;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Frames a request: `[i32 size][header][body]`.
pub fn frame<R: Request>(req: &R, version: i16, correlation_id: i32) -> Result<BytesMut, String> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("corelog-bench")));
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    header
        .encode(&mut buf, R::header_version(version))
        .map_err(|e| e.to_string())?;
    req.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

pub fn read_frame(r: &mut impl Read) -> Result<Bytes, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| format!("connection lost: {e}"))?;
    let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    r.read_exact(&mut body)
        .map_err(|e| format!("connection lost: {e}"))?;
    Ok(Bytes::from(body))
}

pub fn decode_response<R: Request>(mut body: Bytes, version: i16) -> Result<R::Response, String> {
    ResponseHeader::decode(&mut body, R::Response::header_version(version))
        .map_err(|e| e.to_string())?;
    R::Response::decode(&mut body, version).map_err(|e| format!("bad response: {e}"))
}

/// One connection used request-by-request.
pub struct Client {
    stream: crate::tls::Stream,
    correlation: i32,
}

impl Client {
    /// Connects to the first of a comma-separated list of brokers that answers.
    pub fn bootstrap(servers: &str) -> Result<Self, String> {
        let mut last = format!("no broker in {servers:?}");
        for addr in servers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Self::connect(addr) {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn connect(addr: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut stream = crate::tls::Stream::open(stream, addr)?;
        crate::sasl::login(|f| {
            stream.write_all(f).map_err(|e| e.to_string())?;
            read_frame(&mut stream)
        })?;
        Ok(Self {
            stream,
            correlation: 0,
        })
    }

    pub fn call<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response, String> {
        self.correlation += 1;
        let buf = frame(req, version, self.correlation)?;
        self.stream.write_all(&buf).map_err(|e| e.to_string())?;
        let body = read_frame(&mut self.stream)?;
        decode_response::<R>(body, version)
    }

    /// Creates the topic; one that already exists is fine.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        let req = CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(s(name)))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication_factor)
                    .with_configs(
                        configs
                            .iter()
                            .map(|(k, v)| {
                                CreatableTopicConfig::default()
                                    .with_name(s(k))
                                    .with_value(Some(s(v)))
                            })
                            .collect(),
                    ),
            ])
            .with_timeout_ms(30_000);
        let resp = self.call(&req, 5)?;
        match resp.topics.first().map(|t| t.error_code) {
            Some(0) | Some(36) => Ok(()),
            other => Err(format!("CreateTopics failed: {other:?}")),
        }
    }

    /// The Kafka address of each partition's leader, once every partition has one (a new
    /// topic on a cluster elects its leaders in a moment); an error after `patience`.
    pub fn leaders(
        &mut self,
        topic: &str,
        partitions: i32,
        patience: Duration,
    ) -> Result<Vec<String>, String> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let req = MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(TopicName(s(topic)))),
            ]));
            let resp = self.call(&req, 5)?;
            let brokers: std::collections::HashMap<i32, String> = resp
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                .collect();
            let mut out = vec![None; partitions as usize];
            for t in &resp.topics {
                for p in &t.partitions {
                    if p.error_code == 0 && (p.partition_index as usize) < out.len() {
                        out[p.partition_index as usize] = brokers.get(&p.leader_id.0).cloned();
                    }
                }
            }
            if out.iter().all(Option::is_some) {
                return Ok(out.into_iter().flatten().collect());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{topic}: partitions without a leader after {patience:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Brokers the cluster's Metadata names.
    pub fn broker_count(&mut self) -> Result<usize, String> {
        let resp = self.call(&MetadataRequest::default().with_topics(Some(vec![])), 5)?;
        Ok(resp.brokers.len())
    }

    /// (partition, end offset) of the given partitions (all led by this broker).
    pub fn end_offsets_of(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<(i32, i64)>, String> {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|&p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_timestamp(-1)
                            })
                            .collect(),
                    ),
            ]);
        let resp = self.call(&req, 5)?;
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(format!("ListOffsets error {}", p.error_code));
                }
                out.push((p.partition_index, p.offset));
            }
        }
        if out.len() != partitions.len() {
            return Err("ListOffsets answered other partitions than asked".into());
        }
        Ok(out)
    }

    /// One fetch of the given partitions; returns (partition, error, records).
    pub fn fetch(
        &mut self,
        topic: &str,
        offsets: &[(i32, i64)],
        max_wait_ms: i32,
    ) -> Result<Vec<(i32, i16, Bytes)>, String> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(32 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(s(topic)))
                    .with_partitions(
                        offsets
                            .iter()
                            .map(|&(p, o)| {
                                FetchPartition::default()
                                    .with_partition(p)
                                    .with_fetch_offset(o)
                                    .with_partition_max_bytes(4 << 20)
                            })
                            .collect(),
                    ),
            ]);
        let resp = self.call(&req, FETCH_VERSION)?;
        let mut out = Vec::new();
        for t in resp.responses {
            for p in t.partitions {
                out.push((
                    p.partition_index,
                    p.error_code,
                    p.records.unwrap_or_default(),
                ));
            }
        }
        Ok(out)
    }
}

/// A produce connection split in two: the caller writes requests back to back (up to
/// `max_in_flight`), a reader thread takes the answers in order.
pub struct Pipeline {
    writer: BufWriter<crate::tls::WriteHalf>,
    correlation: i32,
}

impl Pipeline {
    pub fn connect(addr: &str) -> Result<(Self, BufReader<crate::tls::ReadHalf>), String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        // An answer that never comes ends the run with an error instead of hanging it.
        stream
            .set_read_timeout(Some(crate::driver::ANSWER_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let (mut write, mut read) = crate::tls::split(stream, addr)?;
        crate::sasl::login(|f| {
            write.write_all(f).map_err(|e| e.to_string())?;
            write.flush().map_err(|e| e.to_string())?;
            read_frame(&mut read)
        })?;
        let reader = BufReader::with_capacity(64 << 10, read);
        Ok((
            Self {
                writer: BufWriter::with_capacity(1 << 20, write),
                correlation: 0,
            },
            reader,
        ))
    }

    /// Sends one Produce of `batch` to `partition`; nothing is awaited.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        acks: i16,
        batch: Bytes,
    ) -> Result<(), String> {
        self.correlation += 1;
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(s(topic)))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(batch)),
                    ]),
            ]);
        let buf = frame(&req, PRODUCE_VERSION, self.correlation)?;
        self.writer.write_all(&buf).map_err(|e| e.to_string())?;
        self.writer.flush().map_err(|e| e.to_string())
    }
}

/// Reads one Produce answer; returns the first error code in it.
pub fn read_produce_ack(r: &mut impl Read) -> Result<i16, String> {
    let body = read_frame(r)?;
    let resp = decode_response::<ProduceRequest>(body, PRODUCE_VERSION)?;
    Ok(resp
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .map(|p| p.error_code)
        .find(|&e| e != 0)
        .unwrap_or(0))
}
