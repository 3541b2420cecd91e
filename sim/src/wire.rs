//! The simulator's own tiny client protocol (the Kafka protocol arrives with the broker):
//! one madsim datagram per message, first byte the kind.

use corelog_replication::{GroupId, Offset};

pub const RAFT: u8 = 1;
pub const PRODUCE: u8 = 2;
pub const PRODUCE_RESP: u8 = 3;
pub const READ: u8 = 4;
pub const READ_RESP: u8 = 5;

pub const OK: u8 = 0;
pub const NOT_LEADER: u8 = 1;
pub const FAILED: u8 = 2;
/// A read below the log start: the body is the start (u64).
pub const BELOW_START: u8 = 3;

pub fn produce(req: u64, group: GroupId, batch: &[u8]) -> Vec<u8> {
    let mut v = vec![PRODUCE];
    v.extend_from_slice(&req.to_le_bytes());
    v.extend_from_slice(&group.to_le_bytes());
    v.extend_from_slice(batch);
    v
}

pub fn read(req: u64, group: GroupId, from: Offset) -> Vec<u8> {
    let mut v = vec![READ];
    v.extend_from_slice(&req.to_le_bytes());
    v.extend_from_slice(&group.to_le_bytes());
    v.extend_from_slice(&from.to_le_bytes());
    v
}

/// A response: kind, request id, status, then `u64 base` (produce) or batches (read).
pub fn response(kind: u8, req: u64, status: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&req.to_le_bytes());
    v.push(status);
    v.extend_from_slice(body);
    v
}

pub struct Request<'a> {
    pub req: u64,
    pub group: GroupId,
    pub rest: &'a [u8],
}

pub fn parse_request(b: &[u8]) -> Option<Request<'_>> {
    if b.len() < 13 {
        return None;
    }
    Some(Request {
        req: u64::from_le_bytes(b[1..9].try_into().ok()?),
        group: u32::from_le_bytes(b[9..13].try_into().ok()?),
        rest: &b[13..],
    })
}

pub struct Response<'a> {
    pub req: u64,
    pub status: u8,
    pub body: &'a [u8],
}

pub fn parse_response(b: &[u8]) -> Option<Response<'_>> {
    if b.len() < 10 {
        return None;
    }
    Some(Response {
        req: u64::from_le_bytes(b[1..9].try_into().ok()?),
        status: b[9],
        body: &b[10..],
    })
}
