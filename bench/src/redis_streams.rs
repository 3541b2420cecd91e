//! Redis Streams as a peer: a partition is a stream key `TOPIC-P`, a message one entry
//! (`XADD key * v VALUE`), a batch that many XADDs pipelined in one write, a consumer an
//! `XREAD BLOCK` over every key. The RESP codec is the `redis` crate's; the sockets are
//! ours, so publishing is pipelined like the Kafka driver's.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc::{Receiver, Sender, channel};

use redis::{Parser, Value};

use crate::driver::{Acks, Consumer, Driver, From, ProducerPair, Publisher};

pub struct Redis {
    pub addr: String,
}

fn connect(addr: &str) -> Result<(TcpStream, BufReader<TcpStream>), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect redis {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    // Every answer is owed within this (XREAD blocks for 100 ms at most).
    s.set_read_timeout(Some(crate::driver::ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let r = BufReader::with_capacity(256 << 10, s.try_clone().map_err(|e| e.to_string())?);
    Ok((s, r))
}

fn key(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// One command, one answer; a Redis error is an error.
fn call(
    w: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    parser: &mut Parser,
    cmd: &redis::Cmd,
) -> Result<Value, String> {
    w.write_all(&cmd.get_packed_command())
        .map_err(|e| format!("redis: {e}"))?;
    match parser.parse_value(r).map_err(|e| format!("redis: {e}"))? {
        Value::ServerError(e) => Err(format!("redis: {e:?}")),
        v => Ok(v),
    }
}

impl Driver for Redis {
    fn create_topic(&self, _topic: &str, _partitions: i32) -> Result<(), String> {
        // A stream comes into being with its first XADD; check the server answers.
        let (mut w, mut r) = connect(&self.addr)?;
        call(&mut w, &mut r, &mut Parser::new(), &redis::cmd("PING")).map(|_| ())
    }

    fn producer(&self, topic: &str) -> Result<ProducerPair, String> {
        let (w, r) = connect(&self.addr)?;
        let (sizes_tx, sizes) = channel();
        Ok((
            Box::new(RedisPublisher {
                w,
                topic: topic.to_string(),
                buf: Vec::with_capacity(1 << 20),
                sizes: sizes_tx,
            }),
            Box::new(RedisAcks {
                r,
                parser: Parser::new(),
                sizes,
            }),
        ))
    }

    fn consumer(
        &self,
        topic: &str,
        partitions: i32,
        from: From,
    ) -> Result<Box<dyn Consumer>, String> {
        let (mut w, mut r) = connect(&self.addr)?;
        let mut parser = Parser::new();
        let mut ids = Vec::new();
        for p in 0..partitions {
            let id = match from {
                From::Beginning => "0-0".to_string(),
                // The last entry's id, so only later ones are read ("$" would skip
                // entries added between two XREADs).
                From::End => {
                    let last = call(
                        &mut w,
                        &mut r,
                        &mut parser,
                        redis::cmd("XREVRANGE")
                            .arg(key(topic, p))
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(1),
                    )?;
                    entries(&last)?
                        .last()
                        .map_or_else(|| "0-0".to_string(), |(id, _)| id.clone())
                }
            };
            ids.push((key(topic, p), id));
        }
        Ok(Box::new(RedisConsumer { w, r, parser, ids }))
    }
}

struct RedisPublisher {
    w: TcpStream,
    topic: String,
    buf: Vec<u8>,
    sizes: Sender<(u64, usize)>,
}

impl Publisher for RedisPublisher {
    fn publish(&mut self, tag: u64, partition: i32, values: &[Vec<u8>]) -> Result<(), String> {
        let key = key(&self.topic, partition);
        self.buf.clear();
        for v in values {
            redis::cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("v")
                .arg(v.as_slice())
                .write_packed_command(&mut self.buf);
        }
        // The ack reader must know how many answers make this batch before they arrive.
        self.sizes
            .send((tag, values.len()))
            .map_err(|_| "redis ack reader stopped".to_string())?;
        self.w
            .write_all(&self.buf)
            .map_err(|e| format!("redis: {e}"))
    }
}

/// Redis answers a connection's commands in order: a batch is acknowledged when as many
/// answers as it had XADDs have come.
struct RedisAcks {
    r: BufReader<TcpStream>,
    parser: Parser,
    sizes: Receiver<(u64, usize)>,
}

impl Acks for RedisAcks {
    fn next(&mut self) -> Result<(u64, Option<String>), String> {
        let (tag, n) = self
            .sizes
            .recv()
            .map_err(|_| "redis publisher stopped".to_string())?;
        let mut failed = None;
        for _ in 0..n {
            let v = self
                .parser
                .parse_value(&mut self.r)
                .map_err(|e| format!("redis: {e}"))?;
            if let (None, Value::ServerError(e)) = (&failed, &v) {
                failed = Some(format!("redis: {e:?}"));
            }
        }
        Ok((tag, failed))
    }
}

struct RedisConsumer {
    w: TcpStream,
    r: BufReader<TcpStream>,
    parser: Parser,
    /// (stream key, id of the last entry read).
    ids: Vec<(String, String)>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[[id, [field, value, ...]], ...]` -> (id, value of field "v").
fn entries(v: &Value) -> Result<Vec<(String, Vec<u8>)>, String> {
    let Value::Array(list) = v else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let Value::Array(pair) = e else {
            return Err(format!("redis: unexpected stream entry {e:?}"));
        };
        let id = pair
            .first()
            .and_then(text)
            .ok_or("redis: entry without id")?;
        let value = match pair.get(1) {
            Some(Value::Array(fields)) => match fields.get(1) {
                Some(Value::BulkString(b)) => b.clone(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        out.push((id, value));
    }
    Ok(out)
}

impl Consumer for RedisConsumer {
    fn poll(&mut self, each: &mut dyn FnMut(&[u8])) -> Result<u64, String> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(4096)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS");
        for (k, _) in &self.ids {
            cmd.arg(k);
        }
        for (_, id) in &self.ids {
            cmd.arg(id);
        }
        let reply = call(&mut self.w, &mut self.r, &mut self.parser, &cmd)?;
        // RESP2: nil on timeout, else [[key, entries], ...].
        let Value::Array(streams) = reply else {
            return Ok(0);
        };
        let mut n = 0;
        for s in &streams {
            let Value::Array(kv) = s else { continue };
            let (Some(k), Some(list)) = (kv.first().and_then(text), kv.get(1)) else {
                continue;
            };
            let got = entries(list)?;
            if let (Some(slot), Some((last, _))) =
                (self.ids.iter_mut().find(|(key, _)| *key == k), got.last())
            {
                slot.1 = last.clone();
            }
            for (_, v) in &got {
                each(v);
                n += 1;
            }
        }
        Ok(n)
    }
}
