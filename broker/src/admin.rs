//! The admin CLI's client (`corelog topic ...`): plain Kafka protocol over a blocking
//! socket, so it works against any Kafka-compatible broker, like `kafka-topics.sh`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::errors;

/// One request as it goes on the wire: size prefix, header, body.
pub fn frame_request<R: Request>(
    req: &R,
    version: i16,
    correlation: i32,
    client_id: &str,
) -> Result<BytesMut, String> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(s(client_id)));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, R::header_version(version))
        .map_err(|e| e.to_string())?;
    req.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// CreateTopics for one topic, as the CLI and a broker forwarding to the controller send it.
pub fn create_topic_request<'a>(
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: impl IntoIterator<Item = (&'a String, &'a String)>,
    timeout_ms: i32,
) -> CreateTopicsRequest {
    let topic = CreatableTopic::default()
        .with_name(TopicName(s(name)))
        .with_num_partitions(partitions)
        .with_replication_factor(replication_factor)
        .with_configs(
            configs
                .into_iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(s(k))
                        .with_value(Some(s(v)))
                })
                .collect(),
        );
    CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(timeout_ms)
}

/// The Kafka address Metadata gives for broker `id`.
pub fn node_addr(md: &MetadataResponse, id: i32) -> Option<String> {
    md.brokers
        .iter()
        .find(|b| b.node_id.0 == id)
        .map(|b| format!("{}:{}", b.host.as_str(), b.port))
}

pub struct Client {
    stream: TcpStream,
    correlation: i32,
    addr: String,
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

impl Client {
    pub fn connect(addr: &str) -> Result<Self, String> {
        let stream =
            TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            stream,
            correlation: 0,
            addr: addr.to_string(),
        })
    }

    /// A client of the cluster's controller (where topic changes go), found through
    /// `bootstrap`'s Metadata: Kafka's admin clients do the same.
    pub fn to_controller(bootstrap: &str) -> Result<Self, String> {
        let mut c = Self::connect(bootstrap)?;
        // A cluster that just started may not have elected its controller yet (Metadata
        // names none): wait for it a while, as Kafka's admin clients retry, rather than
        // fail the first command after `corelog dev`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let md = c.metadata(Some(&[]))?;
            match node_addr(&md, md.controller_id.0) {
                Some(a) if a != c.addr => return Self::connect(&a),
                Some(_) => return Ok(c),
                None if std::time::Instant::now() > deadline => return Ok(c),
                None => std::thread::sleep(std::time::Duration::from_millis(200)),
            }
        }
    }

    /// A client of `group`'s coordinator.
    pub fn to_coordinator(bootstrap: &str, group: &str) -> Result<Self, String> {
        let mut c = Self::connect(bootstrap)?;
        let req = FindCoordinatorRequest::default().with_key(s(group));
        let resp = c.call(&req, 3)?;
        if resp.error_code != 0 {
            return Err(format!(
                "no coordinator for group '{group}': {}",
                errors::name(resp.error_code)
            ));
        }
        let a = format!("{}:{}", resp.host.as_str(), resp.port);
        if a == c.addr {
            Ok(c)
        } else {
            Self::connect(&a)
        }
    }

    /// Kafka addresses of every broker Metadata names.
    pub fn broker_addrs(&mut self) -> Result<Vec<String>, String> {
        let md = self.metadata(Some(&[]))?;
        Ok(md
            .brokers
            .iter()
            .map(|b| format!("{}:{}", b.host.as_str(), b.port))
            .collect())
    }

    pub fn call<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response, String> {
        self.correlation += 1;
        let buf = frame_request(req, version, self.correlation, "corelog-cli")?;
        self.stream
            .write_all(&buf)
            .map_err(|e| format!("send: {e}"))?;
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .map_err(|e| format!("the broker closed the connection: {e}"))?;
        let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("receive: {e}"))?;
        let mut body = Bytes::from(body);
        ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| e.to_string())?;
        R::Response::decode(&mut body, version).map_err(|e| format!("bad response: {e}"))
    }

    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(String, String)],
    ) -> Result<(), String> {
        let pairs = configs.iter().map(|(k, v)| (k, v));
        let req = create_topic_request(name, partitions, replication_factor, pairs, 30_000);
        let resp = self.call(&req, 5)?;
        first_error(
            resp.topics
                .iter()
                .map(|t| (t.error_code, t.error_message.as_ref())),
        )
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<(), String> {
        let req = DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(s(name))])
            .with_timeout_ms(30_000);
        let resp = self.call(&req, 4)?;
        first_error(
            resp.responses
                .iter()
                .map(|t| (t.error_code, t.error_message.as_ref())),
        )
    }

    /// (name, partitions, leader per partition) of the topics asked for, or all.
    pub fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse, String> {
        let req = MetadataRequest::default()
            .with_topics(topics.map(|t| {
                t.iter()
                    .map(|n| MetadataRequestTopic::default().with_name(Some(TopicName(s(n)))))
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        self.call(&req, 12)
    }

    pub fn topic_configs(&mut self, name: &str) -> Result<Vec<(String, String, bool)>, String> {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(name))
                .with_configuration_keys(None),
        ]);
        let resp = self.call(&req, 3)?;
        let mut out = Vec::new();
        for r in resp.results {
            if r.error_code != 0 {
                return Err(errors::name(r.error_code).to_string());
            }
            for c in r.configs {
                out.push((
                    c.name.to_string(),
                    c.value.map(|v| v.to_string()).unwrap_or_default(),
                    c.config_source == 1,
                ));
            }
        }
        Ok(out)
    }

    /// (log start, high watermark) of each partition, asked of each partition's leader.
    pub fn offsets(&mut self, name: &str, partitions: i32) -> Result<Vec<(i64, i64)>, String> {
        let md = self.metadata(Some(&[name]))?;
        let mut by_leader: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
        for p in md
            .topics
            .first()
            .map(|t| t.partitions.as_slice())
            .unwrap_or_default()
        {
            let addr = node_addr(&md, p.leader_id.0).unwrap_or_else(|| self.addr.clone());
            by_leader.entry(addr).or_default().push(p.partition_index);
        }
        let mut out = vec![(-1, -1); partitions as usize];
        for (addr, parts) in by_leader {
            let got = if addr == self.addr {
                self.offsets_here(name, partitions)?
            } else {
                Self::connect(&addr)?.offsets_here(name, partitions)?
            };
            for p in parts {
                if let (Some(slot), Some(v)) = (out.get_mut(p as usize), got.get(p as usize)) {
                    *slot = *v;
                }
            }
        }
        Ok(out)
    }

    /// (log start, high watermark) of each partition, as this broker answers.
    fn offsets_here(&mut self, name: &str, partitions: i32) -> Result<Vec<(i64, i64)>, String> {
        let mut ask = |ts: i64| -> Result<Vec<i64>, String> {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(TopicName(s(name)))
                        .with_partitions(
                            (0..partitions)
                                .map(|p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p)
                                        .with_timestamp(ts)
                                })
                                .collect(),
                        ),
                ]);
            let resp = self.call(&req, 5)?;
            let mut v = vec![-1; partitions as usize];
            for t in resp.topics {
                for p in t.partitions {
                    if let Some(slot) = v.get_mut(p.partition_index as usize) {
                        *slot = p.offset;
                    }
                }
            }
            Ok(v)
        };
        let start = ask(-2)?;
        let end = ask(-1)?;
        Ok(start.into_iter().zip(end).collect())
    }

    /// (group id, state) of every group, from every broker (each lists the groups it
    /// coordinates).
    pub fn list_groups(&mut self) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for addr in self.broker_addrs()? {
            let resp = if addr == self.addr {
                self.call(&ListGroupsRequest::default(), 4)?
            } else {
                Self::connect(&addr)?.call(&ListGroupsRequest::default(), 4)?
            };
            if resp.error_code != 0 {
                return Err(errors::name(resp.error_code).to_string());
            }
            out.extend(
                resp.groups
                    .into_iter()
                    .map(|g| (g.group_id.0.to_string(), g.group_state.to_string())),
            );
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub fn describe_group(
        &mut self,
        group: &str,
    ) -> Result<kafka_protocol::messages::describe_groups_response::DescribedGroup, String> {
        let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]);
        let mut resp = self.call(&req, 5)?;
        resp.groups
            .pop()
            .ok_or_else(|| "empty DescribeGroups response".to_string())
    }

    /// Committed offsets of a group: (topic, partition) -> offset.
    pub fn committed(&mut self, group: &str) -> Result<Vec<(String, i32, i64)>, String> {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(None);
        let resp = self.call(&req, 7)?;
        if resp.error_code != 0 {
            return Err(errors::name(resp.error_code).to_string());
        }
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                out.push((t.name.0.to_string(), p.partition_index, p.committed_offset));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The first per-topic error of an admin response, as "NAME: message".
fn first_error<'a>(
    results: impl Iterator<Item = (i16, Option<&'a StrBytes>)>,
) -> Result<(), String> {
    for (code, message) in results {
        if code != 0 {
            let message = message.map(|m| m.to_string()).unwrap_or_default();
            return Err(format!("{}: {message}", errors::name(code)));
        }
    }
    Ok(())
}
