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

pub struct Client {
    stream: TcpStream,
    correlation: i32,
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
        })
    }

    pub fn call<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response, String> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(s("corelog-cli")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(|e| e.to_string())?;
        req.encode(&mut buf, version).map_err(|e| e.to_string())?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
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
        let topic = CreatableTopic::default()
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
            );
        let req = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(30_000);
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

    /// (log start, high watermark) of each partition.
    pub fn offsets(&mut self, name: &str, partitions: i32) -> Result<Vec<(i64, i64)>, String> {
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

    /// (group id, state) of every group.
    pub fn list_groups(&mut self) -> Result<Vec<(String, String)>, String> {
        let resp = self.call(&ListGroupsRequest::default(), 4)?;
        if resp.error_code != 0 {
            return Err(errors::name(resp.error_code).to_string());
        }
        let mut out: Vec<(String, String)> = resp
            .groups
            .into_iter()
            .map(|g| (g.group_id.0.to_string(), g.group_state.to_string()))
            .collect();
        out.sort();
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
