//! NATS JetStream as a peer: a partition is a file-backed stream `TOPIC-P` on subject
//! `TOPIC.P`, a message one JetStream publish whose acknowledgement (`{"stream":..,"seq":..}`)
//! comes back on a reply subject, a consumer an ephemeral push consumer with no acks.
//!
//! The NATS client protocol is a few text lines (INFO, CONNECT, PUB, SUB, MSG, PING); it
//! is spoken here directly rather than through async-nats, which would bring a tokio
//! runtime into a bench built on plain threads and hide how publishes are pipelined. A
//! batch is its messages' PUBs in one write; each carries reply subject
//! `_INBOX.<conn>.<tag>.<count>`, so acks may come in any order across streams and still be
//! counted against the right batch.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::driver::{Acks, Consumer, Driver, From, ProducerPair, Publisher};

pub struct Nats {
    pub addr: String,
}

enum Op {
    Msg {
        subject: String,
        reply: Option<String>,
        /// The first header line of an HMSG (`NATS/1.0 100 FlowControl Request`, ...).
        status: Option<String>,
        payload: Vec<u8>,
    },
    Ping,
    Pong,
    Other,
}

/// The writing half, shared with the reader so it can answer the server's PINGs.
type Writer = Arc<Mutex<TcpStream>>;

fn write(w: &Writer, bytes: &[u8]) -> Result<(), String> {
    w.lock()
        .map_err(|_| "nats writer poisoned".to_string())?
        .write_all(bytes)
        .map_err(|e| format!("nats: {e}"))
}

fn connect(addr: &str) -> Result<(Writer, BufReader<TcpStream>), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect nats {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    // An ack or API answer that never comes ends the run with an error, not a hang.
    s.set_read_timeout(Some(crate::driver::ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(256 << 10, s.try_clone().map_err(|e| e.to_string())?);
    let w = Arc::new(Mutex::new(s));
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("nats: {e}"))?;
    if !line.starts_with("INFO ") {
        return Err(format!("nats: expected INFO, got {line:?}"));
    }
    // headers + no_responders: a request to a JetStream API nobody serves fails at once.
    write(
        &w,
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"name\":\"corelog-bench\"}\r\nPING\r\n",
    )?;
    loop {
        match read_op(&mut r, &w)? {
            Op::Pong => return Ok((w, r)),
            Op::Msg { .. } => return Err("nats: message before PONG".into()),
            Op::Ping | Op::Other => {}
        }
    }
}

/// Reads one protocol operation; answers PING itself; a server -ERR is an error.
fn read_op(r: &mut BufReader<TcpStream>, w: &Writer) -> Result<Op, String> {
    let mut line = String::new();
    if r.read_line(&mut line).map_err(|e| format!("nats: {e}"))? == 0 {
        return Err("nats: connection closed".into());
    }
    let line = line.trim_end();
    let mut parts = line.split_ascii_whitespace();
    match parts.next() {
        Some("MSG") => {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let args: Vec<&str> = parts.collect();
            let (subject, reply, size) = match args.as_slice() {
                [s, _, size] => (s.to_string(), None, size),
                [s, _, r, size] => (s.to_string(), Some(r.to_string()), size),
                _ => return Err(format!("nats: bad MSG line {line:?}")),
            };
            let size: usize = size.parse().map_err(|_| format!("nats: bad {line:?}"))?;
            let mut payload = vec![0u8; size + 2];
            r.read_exact(&mut payload)
                .map_err(|e| format!("nats: {e}"))?;
            payload.truncate(size);
            Ok(Op::Msg {
                subject,
                reply,
                status: None,
                payload,
            })
        }
        Some("HMSG") => {
            // HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>: the payload
            // is what follows the headers (JetStream status messages carry only headers).
            let args: Vec<&str> = parts.collect();
            let (subject, reply, hdr, total) = match args.as_slice() {
                [s, _, h, t] => (s.to_string(), None, h, t),
                [s, _, r, h, t] => (s.to_string(), Some(r.to_string()), h, t),
                _ => return Err(format!("nats: bad HMSG line {line:?}")),
            };
            let hdr: usize = hdr.parse().map_err(|_| format!("nats: bad {line:?}"))?;
            let total: usize = total.parse().map_err(|_| format!("nats: bad {line:?}"))?;
            let mut buf = vec![0u8; total + 2];
            r.read_exact(&mut buf).map_err(|e| format!("nats: {e}"))?;
            let head = String::from_utf8_lossy(&buf[..hdr.min(total)]).into_owned();
            if head.contains(" 503") {
                return Err(format!(
                    "nats: no responders on {subject} (is JetStream on?)"
                ));
            }
            Ok(Op::Msg {
                subject,
                reply,
                status: head.lines().next().map(str::to_string),
                payload: buf[hdr.min(total)..total].to_vec(),
            })
        }
        Some("PING") => {
            write(w, b"PONG\r\n")?;
            Ok(Op::Ping)
        }
        Some("PONG") => Ok(Op::Pong),
        Some("-ERR") => Err(format!("nats: server error: {line}")),
        _ => Ok(Op::Other),
    }
}

fn token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A JetStream API request (`$JS.API.…`) on its own connection; an API error is an error.
fn api(addr: &str, subject: &str, body: &Value) -> Result<Value, String> {
    let (w, mut r) = connect(addr)?;
    // An API that never answers is an error, not a hung bench.
    r.get_ref()
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let inbox = format!("_INBOX.{}", token());
    let body = body.to_string();
    write(
        &w,
        format!(
            "SUB {inbox} 1\r\nPUB {subject} {inbox} {}\r\n{body}\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    loop {
        if let Op::Msg { payload, .. } = read_op(&mut r, &w)? {
            let v: Value = serde_json::from_slice(&payload)
                .map_err(|e| format!("nats {subject}: bad answer: {e}"))?;
            if let Some(err) = v.get("error") {
                return Err(format!("nats {subject}: {err}"));
            }
            return Ok(v);
        }
    }
}

fn stream(topic: &str, p: i32) -> String {
    format!("{topic}-{p}")
}

impl Driver for Nats {
    fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        for p in 0..partitions {
            let name = stream(topic, p);
            api(
                &self.addr,
                &format!("$JS.API.STREAM.CREATE.{name}"),
                &json!({
                    "name": name,
                    "subjects": [format!("{topic}.{p}")],
                    "storage": "file",
                    "num_replicas": 1,
                    "retention": "limits",
                    "discard": "old",
                }),
            )?;
        }
        Ok(())
    }

    fn producer(&self, topic: &str) -> Result<ProducerPair, String> {
        let (w, r) = connect(&self.addr)?;
        let inbox = format!("_INBOX.{}", token());
        write(&w, format!("SUB {inbox}.> 1\r\n").as_bytes())?;
        Ok((
            Box::new(NatsPublisher {
                w: w.clone(),
                topic: topic.to_string(),
                inbox: inbox.clone(),
                buf: Vec::with_capacity(1 << 20),
            }),
            Box::new(NatsAcks {
                w,
                r,
                prefix: format!("{inbox}."),
                seen: HashMap::new(),
            }),
        ))
    }

    fn consumer(
        &self,
        topic: &str,
        partitions: i32,
        from: From,
    ) -> Result<Box<dyn Consumer>, String> {
        let (w, mut r) = connect(&self.addr)?;
        let deliver = format!("_INBOX.{}", token());
        // Subscribe before the consumers exist so that nothing they push is missed, and
        // sync with a PING so the server has the subscriptions before they are created.
        // One exact subject per partition: a push consumer does not see a wildcard
        // subscription as interest in its deliver subject, and would deliver nothing.
        let mut subs = String::new();
        for p in 0..partitions {
            subs.push_str(&format!("SUB {deliver}.{p} {}\r\n", p + 1));
        }
        subs.push_str("PING\r\n");
        write(&w, subs.as_bytes())?;
        while !matches!(read_op(&mut r, &w)?, Op::Pong) {}
        for p in 0..partitions {
            let name = stream(topic, p);
            api(
                &self.addr,
                &format!("$JS.API.CONSUMER.CREATE.{name}"),
                &json!({
                    "stream_name": name,
                    "config": {
                        "deliver_subject": format!("{deliver}.{p}"),
                        "deliver_policy": if from == From::Beginning { "all" } else { "new" },
                        "ack_policy": "none",
                        "replay_policy": "instant",
                        // Without acks nothing else paces the server: flow control keeps
                        // a catch-up read from overrunning the connection (which NATS
                        // would close as a slow consumer). It needs heartbeats.
                        "flow_control": true,
                        "idle_heartbeat": 5_000_000_000u64,
                    }
                }),
            )?;
        }
        Ok(Box::new(NatsConsumer { w, r }))
    }
}

struct NatsPublisher {
    w: Writer,
    topic: String,
    inbox: String,
    buf: Vec<u8>,
}

impl Publisher for NatsPublisher {
    fn publish(&mut self, tag: u64, partition: i32, values: &[Vec<u8>]) -> Result<(), String> {
        self.buf.clear();
        let n = values.len();
        for v in values {
            self.buf.extend_from_slice(
                format!(
                    "PUB {}.{partition} {}.{tag}.{n} {}\r\n",
                    self.topic,
                    self.inbox,
                    v.len()
                )
                .as_bytes(),
            );
            self.buf.extend_from_slice(v);
            self.buf.extend_from_slice(b"\r\n");
        }
        write(&self.w, &self.buf)
    }
}

struct NatsAcks {
    w: Writer,
    r: BufReader<TcpStream>,
    prefix: String,
    /// tag -> (acks seen, any refused).
    seen: HashMap<u64, (usize, Option<String>)>,
}

impl Acks for NatsAcks {
    fn next(&mut self) -> Result<(u64, Option<String>), String> {
        loop {
            let Op::Msg {
                subject, payload, ..
            } = read_op(&mut self.r, &self.w)?
            else {
                continue;
            };
            let Some(rest) = subject.strip_prefix(&self.prefix) else {
                continue;
            };
            let (tag, n) = rest
                .split_once('.')
                .and_then(|(t, n)| Some((t.parse::<u64>().ok()?, n.parse::<usize>().ok()?)))
                .ok_or_else(|| format!("nats: unexpected reply subject {subject}"))?;
            // An ack is {"stream":..,"seq":..}; a refusal {"error":{..}}.
            let refused = (!payload.starts_with(b"{\"stream\""))
                .then(|| format!("nats: {}", String::from_utf8_lossy(&payload)));
            let e = self.seen.entry(tag).or_insert((0, None));
            e.0 += 1;
            if e.1.is_none() {
                e.1 = refused;
            }
            if e.0 == n {
                let (_, refused) = self.seen.remove(&tag).expect("just seen");
                return Ok((tag, refused));
            }
        }
    }
}

struct NatsConsumer {
    w: Writer,
    r: BufReader<TcpStream>,
}

impl Consumer for NatsConsumer {
    fn poll(&mut self, each: &mut dyn FnMut(&[u8])) -> Result<u64, String> {
        // Pushed messages arrive on their own: take what is buffered (at most a bounded
        // number, so the caller checks its stop flag), waiting up to 100 ms for the first.
        // Only that wait has the short timeout; an operation begun is read whole.
        let mut n = 0;
        while n < 10_000 {
            if self.r.buffer().is_empty() {
                if n > 0 {
                    break;
                }
                let timeout = |r: &BufReader<TcpStream>, t| {
                    r.get_ref()
                        .set_read_timeout(Some(t))
                        .map_err(|e| e.to_string())
                };
                timeout(&self.r, std::time::Duration::from_millis(100))?;
                let filled = self.r.fill_buf().map(|b| b.len());
                timeout(&self.r, crate::driver::ANSWER_TIMEOUT)?;
                match filled {
                    Ok(0) => return Err("nats: connection closed".into()),
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(e) => return Err(format!("nats: {e}")),
                }
            }
            match read_op(&mut self.r, &self.w)? {
                Op::Msg {
                    status: Some(status),
                    reply,
                    ..
                } => {
                    // A flow-control request wants an empty reply; heartbeats nothing.
                    if let (true, Some(reply)) = (status.contains("FlowControl"), reply) {
                        write(&self.w, format!("PUB {reply} 0\r\n\r\n").as_bytes())?;
                    }
                }
                Op::Msg { payload, .. } => {
                    each(&payload);
                    n += 1;
                }
                _ => {}
            }
        }
        Ok(n)
    }
}

/// Whether JetStream answers its API on `addr` yet.
pub fn jetstream_ready(addr: &str) -> bool {
    api(addr, "$JS.API.INFO", &json!({})).is_ok()
}
