//! The real `corelog serve` process over TCP: admin, produce and fetch (bytes served
//! exactly as stored), a malformed frame, graceful shutdown and restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corelog_broker::admin::Client;
use corelog_storage::batch::{BatchHeader, build};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

struct Broker {
    child: Child,
    addr: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    fn start(dir: &std::path::Path, port: u16) -> Self {
        Self::start_in(dir, port, &["--data-dir", dir.to_str().unwrap()])
    }

    /// Starts in `cwd` with the given extra flags.
    fn start_in(cwd: &std::path::Path, port: u16, extra: &[&str]) -> Self {
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
            .args(["serve", "--listen", &addr, "--shards", "2"])
            .args(extra)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corelog");
        // Ready once it logs that it serves; the rest of its log is drained in the
        // background so it never blocks on a full pipe.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "corelog did not start");
            match lines.next() {
                Some(Ok(l)) if l.contains("corelog serving") => break,
                Some(_) => {}
                None => panic!("corelog exited: {:?}", child.wait()),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    fn terminate(mut self) -> i32 {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn produce(c: &mut Client, topic: &str, batch: Vec<u8>) -> (i16, i64) {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(s(topic)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(batch))),
                ]),
        ]);
    let resp = c.call(&req, 9).unwrap();
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch(c: &mut Client, topic: &str, offset: i64) -> (i16, i64, Bytes) {
    let req = FetchRequest::default()
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(s(topic)))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let resp = c.call(&req, 11).unwrap();
    let p = &resp.responses[0].partitions[0];
    (
        p.error_code,
        p.high_watermark,
        p.records.clone().unwrap_or_default(),
    )
}

#[test]
fn serve_admin_produce_fetch_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start(dir.path(), port);
    let mut c = Client::connect(&broker.addr).unwrap();
    c.create_topic("events", 3, 1, &[("retention.ms".into(), "60000".into())])
        .unwrap();
    let err = c.create_topic("events", 3, 1, &[]).unwrap_err();
    assert!(err.contains("TOPIC_ALREADY_EXISTS"), "{err}");
    let md = c.metadata(Some(&["events"])).unwrap();
    assert_eq!(md.topics[0].partitions.len(), 3);

    // The batch comes back byte for byte, only its base offset and epoch patched.
    let batch = build::batch(&[b"one", b"two", b"three"], 1_700_000_000_000);
    assert_eq!(produce(&mut c, "events", batch.clone()), (0, 0));
    assert_eq!(produce(&mut c, "events", batch.clone()), (0, 3));
    let (error, hw, records) = fetch(&mut c, "events", 0);
    assert_eq!((error, hw), (0, 6));
    assert_eq!(records.len(), 2 * batch.len());
    assert_eq!(records[21..batch.len()], batch[21..]);
    assert_eq!(
        BatchHeader::parse(&records[batch.len()..])
            .unwrap()
            .base_offset,
        3
    );
    // Past the end: OFFSET_OUT_OF_RANGE.
    assert_eq!(fetch(&mut c, "events", 7).0, 1);
    // A corrupt batch: CORRUPT_MESSAGE, and nothing stored.
    let mut bad = batch.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(produce(&mut c, "events", bad).0, 2);

    // A malformed frame closes only its own connection.
    let mut raw = TcpStream::connect(&broker.addr).unwrap();
    raw.write_all(&0x7fff_ffffi32.to_be_bytes()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(raw.read(&mut buf).unwrap_or(0), 0, "connection not closed");
    assert_eq!(
        fetch(&mut c, "events", 0).1,
        6,
        "other connections still served"
    );

    drop(c);
    assert_eq!(broker.terminate(), 0, "graceful shutdown exits 0");
    let broker = Broker::start(dir.path(), port);
    let mut c = Client::connect(&broker.addr).unwrap();
    let (error, hw, records) = fetch(&mut c, "events", 3);
    assert_eq!((error, hw), (0, 6));
    assert_eq!(BatchHeader::parse(&records).unwrap().base_offset, 3);
    let configs = c.topic_configs("events").unwrap();
    assert!(configs.contains(&("retention.ms".into(), "60000".into(), true)));
    c.delete_topic("events").unwrap();
    assert!(c.metadata(Some(&["events"])).unwrap().topics[0].error_code != 0);
    assert_eq!(broker.terminate(), 0);
}

/// The defaults as a new user runs them: data in `./corelog-data`, a relative path
/// (glommio's io_uring opens refuse relative paths; the broker must resolve it).
#[test]
fn default_relative_data_dir_works() {
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start_in(cwd.path(), port, &[]);
    let mut c = Client::connect(&broker.addr).unwrap();
    c.create_topic("rel", 2, 1, &[]).unwrap();
    let batch = build::batch(&[b"x"], 0);
    assert_eq!(produce(&mut c, "rel", batch), (0, 0));
    assert!(cwd.path().join("corelog-data/topics/rel-0").is_dir());
    // A second broker on the same data dir (another port) is refused.
    let second = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another corelog"));
    drop(c);
    assert_eq!(broker.terminate(), 0);
}
