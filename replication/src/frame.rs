//! The wire format of an [`Envelope`]:
//!
//! ```text
//! [u32 LE frame length (bytes after this field)][u8 version = 3]
//! [u32 LE header length][rkyv-archived WireEnvelope][record batches, back to back]
//! [forwarded controller proposals, back to back]
//! ```
//!
//! The header carries every field and the length of each batch; the batch bytes follow
//! untouched, so a receiver slices them out of its buffer without copying. Headers are
//! validated with bytecheck (`rkyv::access`) on receive: frames come from the network and
//! are never trusted.

use bytes::{Buf, Bytes};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::message::{Append, Message};
use crate::node::{Envelope, LeaderClaim};

/// 2: leader claims after the items, and the leader's log start in every Append.
/// 3: forwarded controller proposals after the batches.
/// 4: leadership transfer (TimeoutNow, and the transfer flag of Vote).
pub const VERSION: u8 = 4;
/// Largest frame accepted: bounds what a peer can make us buffer.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct WireEnvelope {
    from: u32,
    items: Vec<WireItem>,
    claims: Option<Vec<WireClaim>>,
    proposal_lens: Vec<u32>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct WireClaim {
    group: u32,
    epoch: u32,
    isr: Vec<u32>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct WireItem {
    group: u32,
    msg: WireMessage,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
enum WireMessage {
    PreVote {
        term: u32,
        last_term: u32,
        end: u64,
    },
    PreVoteResponse {
        term: u32,
        granted: bool,
    },
    Vote {
        term: u32,
        last_term: u32,
        end: u64,
        transfer: bool,
    },
    VoteResponse {
        term: u32,
        granted: bool,
    },
    TimeoutNow {
        term: u32,
    },
    Append {
        term: u32,
        prev_end: u64,
        prev_term: u32,
        commit: u64,
        entry_lens: Vec<u32>,
        sent_ms: u64,
        log_start: u64,
    },
    AppendResponse {
        term: u32,
        end: u64,
        success: bool,
        prev_end: u64,
        echo_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    Truncated,
    TooLarge(usize),
    Version(u8),
    Header(String),
    EntryLengths,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => write!(f, "frame truncated"),
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds {MAX_FRAME_BYTES}"),
            FrameError::Version(v) => write!(f, "unknown frame version {v}"),
            FrameError::Header(e) => write!(f, "invalid frame header: {e}"),
            FrameError::EntryLengths => write!(f, "entry lengths do not match the frame"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes an envelope into one frame.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut batches: Vec<&Bytes> = Vec::new();
    let items = env
        .items
        .iter()
        .map(|(group, msg)| WireItem {
            group: *group,
            msg: match msg {
                Message::PreVote {
                    term,
                    last_term,
                    end,
                } => WireMessage::PreVote {
                    term: *term,
                    last_term: *last_term,
                    end: *end,
                },
                Message::PreVoteResponse { term, granted } => WireMessage::PreVoteResponse {
                    term: *term,
                    granted: *granted,
                },
                Message::Vote {
                    term,
                    last_term,
                    end,
                    transfer,
                } => WireMessage::Vote {
                    term: *term,
                    last_term: *last_term,
                    end: *end,
                    transfer: *transfer,
                },
                Message::TimeoutNow { term } => WireMessage::TimeoutNow { term: *term },
                Message::VoteResponse { term, granted } => WireMessage::VoteResponse {
                    term: *term,
                    granted: *granted,
                },
                Message::Append(a) => {
                    batches.extend(a.entries.iter());
                    WireMessage::Append {
                        term: a.term,
                        prev_end: a.prev_end,
                        prev_term: a.prev_term,
                        commit: a.commit,
                        entry_lens: a.entries.iter().map(|e| e.len() as u32).collect(),
                        sent_ms: a.sent_ms,
                        log_start: a.log_start,
                    }
                }
                Message::AppendResponse {
                    term,
                    end,
                    success,
                    prev_end,
                    echo_ms,
                } => WireMessage::AppendResponse {
                    term: *term,
                    end: *end,
                    success: *success,
                    prev_end: *prev_end,
                    echo_ms: *echo_ms,
                },
            },
        })
        .collect();
    let claims = env.claims.as_ref().map(|claims| {
        claims
            .iter()
            .map(|c| WireClaim {
                group: c.group,
                epoch: c.epoch,
                isr: c.isr.clone(),
            })
            .collect()
    });
    batches.extend(env.proposals.iter());
    let header = rkyv::to_bytes::<rancor::Error>(&WireEnvelope {
        from: env.from,
        items,
        claims,
        proposal_lens: env.proposals.iter().map(|p| p.len() as u32).collect(),
    })
    .expect("serializing to memory cannot fail");
    let body: usize = batches.iter().map(|b| b.len()).sum();
    let frame_len = 1 + 4 + header.len() + body;
    let mut out = Vec::with_capacity(4 + frame_len);
    out.extend_from_slice(&(frame_len as u32).to_le_bytes());
    out.push(VERSION);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for b in batches {
        out.extend_from_slice(b);
    }
    out
}

/// The length of the frame at the start of `buf` (prefix included), once the prefix is
/// there: lets a stream reader know how much to wait for.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if n > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(n));
    }
    Ok(Some(4 + n))
}

/// Decodes one whole frame. Batch bytes are slices of `frame`, not copies.
pub fn decode(mut frame: Bytes) -> Result<Envelope, FrameError> {
    let total = frame_len(&frame)?.ok_or(FrameError::Truncated)?;
    if frame.len() != total || total < 9 {
        return Err(FrameError::Truncated);
    }
    frame.advance(4);
    let version = frame.get_u8();
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let header_len = frame.get_u32_le() as usize;
    if header_len > frame.len() {
        return Err(FrameError::Truncated);
    }
    // The archive's root sits at its end, so it needs exactly its bytes, aligned.
    let mut aligned = AlignedVec::<16>::with_capacity(header_len);
    aligned.extend_from_slice(&frame[..header_len]);
    frame.advance(header_len);
    let wire = rkyv::access::<ArchivedWireEnvelope, rancor::Error>(&aligned)
        .map_err(|e| FrameError::Header(e.to_string()))?;
    let mut items = Vec::with_capacity(wire.items.len());
    for item in wire.items.iter() {
        let msg = match &item.msg {
            ArchivedWireMessage::PreVote {
                term,
                last_term,
                end,
            } => Message::PreVote {
                term: term.to_native(),
                last_term: last_term.to_native(),
                end: end.to_native(),
            },
            ArchivedWireMessage::PreVoteResponse { term, granted } => Message::PreVoteResponse {
                term: term.to_native(),
                granted: *granted,
            },
            ArchivedWireMessage::Vote {
                term,
                last_term,
                end,
                transfer,
            } => Message::Vote {
                term: term.to_native(),
                last_term: last_term.to_native(),
                end: end.to_native(),
                transfer: *transfer,
            },
            ArchivedWireMessage::TimeoutNow { term } => Message::TimeoutNow {
                term: term.to_native(),
            },
            ArchivedWireMessage::VoteResponse { term, granted } => Message::VoteResponse {
                term: term.to_native(),
                granted: *granted,
            },
            ArchivedWireMessage::Append {
                term,
                prev_end,
                prev_term,
                commit,
                entry_lens,
                sent_ms,
                log_start,
            } => {
                let mut entries = Vec::with_capacity(entry_lens.len());
                for len in entry_lens.iter() {
                    let len = len.to_native() as usize;
                    if len > frame.len() {
                        return Err(FrameError::EntryLengths);
                    }
                    entries.push(frame.split_to(len));
                }
                Message::Append(Append {
                    term: term.to_native(),
                    prev_end: prev_end.to_native(),
                    prev_term: prev_term.to_native(),
                    commit: commit.to_native(),
                    entries,
                    sent_ms: sent_ms.to_native(),
                    log_start: log_start.to_native(),
                })
            }
            ArchivedWireMessage::AppendResponse {
                term,
                end,
                success,
                prev_end,
                echo_ms,
            } => Message::AppendResponse {
                term: term.to_native(),
                end: end.to_native(),
                success: *success,
                prev_end: prev_end.to_native(),
                echo_ms: echo_ms.to_native(),
            },
        };
        items.push((item.group.to_native(), msg));
    }
    let mut proposals = Vec::with_capacity(wire.proposal_lens.len());
    for len in wire.proposal_lens.iter() {
        let len = len.to_native() as usize;
        if len > frame.len() {
            return Err(FrameError::EntryLengths);
        }
        proposals.push(frame.split_to(len));
    }
    if !frame.is_empty() {
        return Err(FrameError::EntryLengths);
    }
    let claims = wire.claims.as_ref().map(|claims| {
        claims
            .iter()
            .map(|c| LeaderClaim {
                group: c.group.to_native(),
                epoch: c.epoch.to_native(),
                isr: c.isr.iter().map(|n| n.to_native()).collect(),
            })
            .collect()
    });
    Ok(Envelope {
        from: wire.from.to_native(),
        items,
        claims,
        proposals,
    })
}

/// An envelope with every kind of message in it: the round-trip tests and the fuzz
/// corpus start from it.
pub fn sample() -> Envelope {
    Envelope {
        from: 3,
        items: vec![
            (
                1,
                Message::PreVote {
                    term: 4,
                    last_term: 3,
                    end: 99,
                },
            ),
            (
                2,
                Message::Append(Append {
                    term: 5,
                    prev_end: 10,
                    prev_term: 4,
                    commit: 8,
                    entries: vec![
                        Bytes::from_static(b"first batch"),
                        Bytes::from_static(b"second"),
                    ],
                    sent_ms: 1234,
                    log_start: 3,
                }),
            ),
            (
                2,
                Message::AppendResponse {
                    term: 5,
                    end: 12,
                    success: true,
                    prev_end: 10,
                    echo_ms: 77,
                },
            ),
            (
                0,
                Message::VoteResponse {
                    term: 1,
                    granted: false,
                },
            ),
            (
                4,
                Message::Vote {
                    term: 6,
                    last_term: 5,
                    end: 12,
                    transfer: true,
                },
            ),
            (4, Message::TimeoutNow { term: 5 }),
        ],
        claims: Some(vec![LeaderClaim {
            group: 2,
            epoch: 5,
            isr: vec![3, 1],
        }]),
        proposals: vec![Bytes::from_static(b"a controller batch")],
    }
}

/// Encoded sample frames (the whole sample, and each message on its own): fuzz seeds.
pub fn sample_frames() -> Vec<Vec<u8>> {
    let env = sample();
    let mut out = vec![encode(&env)];
    for item in &env.items {
        out.push(encode(&Envelope {
            from: env.from,
            items: vec![item.clone()],
            claims: None,
            proposals: Vec::new(),
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn envelopes_round_trip() {
        let env = sample();
        let bytes = encode(&env);
        assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
        assert_eq!(decode(Bytes::from(bytes)).unwrap(), env);
    }

    #[test]
    fn damaged_frames_are_refused_not_trusted() {
        let bytes = encode(&sample());
        assert_eq!(
            decode(Bytes::from(bytes[..bytes.len() - 1].to_vec())),
            Err(FrameError::Truncated)
        );
        let mut v = bytes.clone();
        v[4] = 9;
        assert_eq!(decode(Bytes::from(v)), Err(FrameError::Version(9)));
        let mut too_big = bytes.clone();
        too_big[..4].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(matches!(
            decode(Bytes::from(too_big)),
            Err(FrameError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn random_corruption_never_panics(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..8)) {
            let mut bytes = encode(&sample());
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x | 1;
            }
            let _ = decode(Bytes::from(bytes));
        }
    }
}
