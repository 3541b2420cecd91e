//! Topic creation asked of a broker that is not the controller (a Metadata request that
//! auto-creates a topic lands on any broker): forwarded to the controller as a Kafka
//! CreateTopics request to its Kafka listener, as Kafka brokers forward to theirs.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, HeaderVersion};

use crate::errors as code;

const VERSION: i16 = 5;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Asks the controller at `addr` to create a topic; Ok once it answered success (or that
/// the topic exists).
pub async fn create_topic(
    addr: &str,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &BTreeMap<String, String>,
) -> Result<(), (i16, String)> {
    let io = |e: std::io::Error| {
        (
            code::NOT_CONTROLLER,
            format!("forwarding to the controller at {addr}: {e}"),
        )
    };
    let req = crate::admin::create_topic_request(
        name,
        partitions,
        replication_factor,
        configs,
        TIMEOUT.as_millis() as i32,
    );
    let buf = crate::admin::frame_request(&req, VERSION, 1, "corelog-forward")
        .map_err(|e| (code::UNKNOWN_SERVER_ERROR, e))?;
    let exchange = async {
        use std::net::ToSocketAddrs;
        let a = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = TcpStream::connect_timeout(a, Duration::from_secs(2))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        stream.write_all(&buf).await?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let n = i32::from_be_bytes(len);
        if !(0..=(1 << 20)).contains(&n) {
            return Err(std::io::Error::other(format!("response of {n} bytes")));
        }
        let mut body = vec![0u8; n as usize];
        stream.read_exact(&mut body).await?;
        Ok(body)
    };
    let body = futures_lite::future::or(exchange, async {
        glommio::timer::sleep(TIMEOUT).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ))
    })
    .await
    .map_err(io)?;
    let mut body = Bytes::from(body);
    ResponseHeader::decode(&mut body, CreateTopicsResponse::header_version(VERSION))
        .map_err(|e| (code::UNKNOWN_SERVER_ERROR, e.to_string()))?;
    let resp = CreateTopicsResponse::decode(&mut body, VERSION)
        .map_err(|e| (code::UNKNOWN_SERVER_ERROR, e.to_string()))?;
    match resp.topics.first() {
        Some(t) if t.error_code == code::NONE || t.error_code == code::TOPIC_ALREADY_EXISTS => {
            Ok(())
        }
        Some(t) => Err((
            t.error_code,
            t.error_message
                .as_ref()
                .map_or_else(|| code::name(t.error_code).to_string(), |m| m.to_string()),
        )),
        None => Err((
            code::UNKNOWN_SERVER_ERROR,
            "empty CreateTopics response".into(),
        )),
    }
}
