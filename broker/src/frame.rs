//! Response frames that carry stored batches by reference.
//!
//! A fetch answer is mostly record batches the broker already holds (the leader's newest
//! batches, or a range of a buffer read from the device). The codec would copy them into
//! the response, after the partition task had joined several into one buffer: two copies
//! of every consumed byte before the kernel's own. Here the codec writes the response as
//! usual into a buffer that, when it is handed a registered records section, ends the
//! current piece and puts the stored `Bytes` next to it instead of copying them; the
//! connection then writes the pieces in order. What the client receives is the same bytes
//! (a test encodes both ways and compares).

use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// A response as the connection writes it: pieces sent one after the other.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    parts: Vec<Bytes>,
}

impl Frame {
    pub fn one(bytes: Bytes) -> Self {
        Self { parts: vec![bytes] }
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame as one buffer (a copy when it has several pieces): for tests and tools.
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [one] => one.clone(),
            parts => {
                let mut out = BytesMut::with_capacity(self.len());
                for p in parts {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

/// Pieces shorter than this are copied into the frame: a separate send costs more.
pub const SPLICE_MIN: usize = 16 << 10;

/// Stand-ins for records sections of several pieces: the codec needs one slice of the
/// right length to size and "write"; it is never read, so it costs no memory (bss). Each
/// section gets its own start in it, so that stand-ins of equal length stay distinct.
static STAND_INS: [u8; 16 << 20] = [0; 16 << 20];

/// Most sections one response splices with stand-ins; later ones are joined.
const MAX_STAND_INS: usize = 4096;

/// The record batches of one partition in a fetch answer, in offset order, uncopied.
#[derive(Debug, Clone, Default)]
pub struct Records {
    parts: Vec<Bytes>,
}

impl Records {
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.parts.push(part);
        }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// All of it as one buffer (a copy when it has several pieces).
    pub fn to_bytes(&self) -> Bytes {
        Frame {
            parts: self.parts.clone(),
        }
        .to_bytes()
    }
}

impl From<Bytes> for Records {
    fn from(b: Bytes) -> Self {
        let mut r = Self::default();
        r.push(b);
        r
    }
}

/// Collects the records sections of one response before it is encoded.
#[derive(Default)]
pub struct Splicer {
    /// Each stand-in's address and length, and the pieces it stands for. Only sections
    /// of at least [`SPLICE_MIN`] are here, so a response holds few.
    sections: Vec<(usize, usize, Vec<Bytes>)>,
    stand_ins: usize,
    /// Bytes that will be sent by reference (not encoded into the frame's own buffer).
    spliced_bytes: usize,
}

impl Splicer {
    /// What to put in the response's `records` field for `records`: a buffer the codec
    /// will hand back to [`Splicer::encode`], which sends `records` in its place.
    pub fn register(&mut self, records: Records) -> Bytes {
        let len = records.len();
        if len < SPLICE_MIN {
            // Small: copied by the codec, as any field.
            return records.to_bytes();
        }
        let (stand_in, parts) = match records.parts.len() {
            1 => (records.parts[0].clone(), records.parts),
            _ if self.stand_ins < MAX_STAND_INS && self.stand_ins + len <= STAND_INS.len() => {
                let at = self.stand_ins;
                self.stand_ins += 1;
                (Bytes::from_static(&STAND_INS[at..at + len]), records.parts)
            }
            // Past the stand-ins' room: joined, then sent as that one piece.
            _ => {
                let joined = records.to_bytes();
                (joined.clone(), vec![joined])
            }
        };
        self.spliced_bytes += len;
        self.sections
            .push((stand_in.as_ptr() as usize, stand_in.len(), parts));
        stand_in
    }

    /// Encodes a response with `encode`, which writes into the buffer it is given as the
    /// codec does; returns the frame with every registered section sent by reference.
    /// `size` is the encoded size (the codec's `compute_size`), for one allocation.
    pub fn encode(
        self,
        size: usize,
        encode: impl FnOnce(&mut SpliceBuf) -> Result<(), String>,
    ) -> Result<Frame, String> {
        let mut buf = SpliceBuf {
            out: BytesMut::with_capacity(size.saturating_sub(self.spliced_bytes)),
            parts: Vec::new(),
            sections: self.sections,
        };
        encode(&mut buf)?;
        if !buf.sections.is_empty() {
            // The codec never asked for a section: sending the response without it would
            // be a frame shorter than its length prefix.
            return Err("a fetch response's records were not encoded".into());
        }
        if !buf.out.is_empty() || buf.parts.is_empty() {
            let rest = buf.out.split().freeze();
            buf.parts.push(rest);
        }
        Ok(Frame { parts: buf.parts })
    }
}

/// The buffer a response is encoded into (see [`Splicer::encode`]).
pub struct SpliceBuf {
    out: BytesMut,
    parts: Vec<Bytes>,
    sections: Vec<(usize, usize, Vec<Bytes>)>,
}

impl SpliceBuf {
    fn take(&mut self, src: &[u8]) -> Option<Vec<Bytes>> {
        if src.len() < SPLICE_MIN {
            return None;
        }
        let at = (src.as_ptr() as usize, src.len());
        let i = self.sections.iter().position(|s| (s.0, s.1) == at)?;
        Some(self.sections.swap_remove(i).2)
    }
}

// SAFETY: every method forwards to `BytesMut`'s own implementation, whose contract holds;
// `put_slice` only chooses between forwarding and keeping a reference to the caller's
// bytes (which it does not write). `BufMut` is an unsafe trait because `chunk_mut` and
// `advance_mut` describe memory; both are `BytesMut`'s, unchanged.
#[allow(unsafe_code)]
unsafe impl BufMut for SpliceBuf {
    fn remaining_mut(&self) -> usize {
        self.out.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's promise (cnt bytes of chunk_mut initialised) is about the
        // chunk `self.out` handed out, so it carries over.
        unsafe { self.out.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.out.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.take(src) {
            Some(pieces) => {
                if !self.out.is_empty() {
                    self.parts.push(self.out.split().freeze());
                }
                self.parts.extend(pieces);
            }
            None => self.out.extend_from_slice(src),
        }
    }
}

impl ByteBufMut for SpliceBuf {
    // Offsets are into the piece being written (the codec uses them for gaps it fills
    // before writing further, never across a records section).
    fn offset(&self) -> usize {
        self.out.len()
    }

    fn seek(&mut self, offset: usize) {
        self.out.resize(offset, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        &mut self.out[r]
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, TopicName};
    use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

    use super::*;

    fn piece(tag: u8, len: usize) -> Bytes {
        Bytes::from((0..len).map(|i| tag ^ (i as u8) | 1).collect::<Vec<u8>>())
    }

    /// Sections of every kind: empty, small (copied), one big piece, several pieces (one
    /// pair of equal length, so stand-ins must not be confused), several small pieces
    /// adding up to a big section.
    fn sections() -> Vec<Records> {
        let many = |tag: u8, lens: &[usize]| {
            let mut r = Records::default();
            for (i, &l) in lens.iter().enumerate() {
                r.push(piece(tag + i as u8, l));
            }
            r
        };
        vec![
            Records::default(),
            Records::from(piece(1, 100)),
            Records::from(piece(2, 64 << 10)),
            many(10, &[20 << 10, 30 << 10]),
            many(20, &[30 << 10, 20 << 10]),
            many(30, &[4 << 10; 8]),
            Records::from(piece(3, SPLICE_MIN)),
        ]
    }

    fn response(mut records: impl FnMut(Records) -> Bytes) -> FetchResponse {
        let mut resp = FetchResponse::default();
        for (t, chunk) in sections().chunks(3).enumerate() {
            let mut partitions = Vec::new();
            for (p, r) in chunk.iter().enumerate() {
                partitions.push(
                    PartitionData::default()
                        .with_partition_index(p as i32)
                        .with_high_watermark(1000)
                        .with_records(Some(records(r.clone()))),
                );
            }
            resp.responses.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(format!("topic-{t}"))))
                    .with_partitions(partitions),
            );
        }
        resp
    }

    #[test]
    fn a_spliced_response_is_byte_for_byte_the_codecs_and_copies_no_big_section() {
        for version in 4..=12 {
            let expected = {
                let resp = response(|r| r.to_bytes());
                let mut buf = BytesMut::new();
                buf.put_i32(0);
                let header =
                    kafka_protocol::messages::ResponseHeader::default().with_correlation_id(7);
                header
                    .encode(&mut buf, FetchResponse::header_version(version))
                    .unwrap();
                resp.encode(&mut buf, version).unwrap();
                let len = (buf.len() - 4) as i32;
                buf[..4].copy_from_slice(&len.to_be_bytes());
                buf.freeze()
            };
            let mut splicer = Splicer::default();
            let resp = response(|r| splicer.register(r));
            let frame = crate::api::respond_splicing(7, version, &resp, splicer)
                .unwrap()
                .unwrap();
            assert_eq!(frame.to_bytes(), expected, "version {version}");
            // Every piece of a big section is a piece of the frame (not copied into
            // the codec's buffer).
            let all = sections();
            let big: Vec<&Bytes> = all
                .iter()
                .filter(|r| r.len() >= SPLICE_MIN)
                .flat_map(|r| r.parts())
                .collect();
            for b in &big {
                assert!(
                    frame.parts().iter().any(|p| p == *b),
                    "version {version}: a piece of {} bytes was copied",
                    b.len()
                );
            }
            assert!(frame.parts().len() > big.len(), "version {version}");
        }
    }

    #[test]
    fn stored_buffers_are_referenced_not_copied() {
        let big = piece(9, 100 << 10);
        let mut splicer = Splicer::default();
        let mut resp = FetchResponse::default();
        resp.responses.push(
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    PartitionData::default()
                        .with_records(Some(splicer.register(Records::from(big.clone())))),
                ]),
        );
        let frame = crate::api::respond_splicing(1, 12, &resp, splicer)
            .unwrap()
            .unwrap();
        assert!(
            frame.parts().iter().any(|p| p.as_ptr() == big.as_ptr()),
            "the stored buffer itself is one of the pieces"
        );
    }

    #[test]
    fn a_section_the_codec_never_wrote_fails_the_response() {
        let mut splicer = Splicer::default();
        let _unused = splicer.register(Records::from(piece(4, 64 << 10)));
        let resp = FetchResponse::default();
        assert!(crate::api::respond_splicing(1, 12, &resp, splicer).is_err());
    }
}
