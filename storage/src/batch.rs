//! Kafka RecordBatch v2 framing: the 61-byte header, its validation, and in-place patches.
//!
//! Storage keeps batches byte for byte as produced. Only two header fields ever change, and
//! both lie outside the CRC (which covers `attributes` to the end): the base offset, which
//! the log assigns, and the partition leader epoch, which replication stamps. So a batch is
//! validated once, on append, and served later without re-encoding.
//!
//! ```text
//! 0  baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8
//! 17 crc u32 | 21 attributes i16 | 23 lastOffsetDelta i32 | 27 baseTimestamp i64
//! 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32
//! 57 recordCount i32 | 61 records...
//! ```
//! All integers are big-endian, as on the wire.

use thiserror::Error;

/// Bytes of the v2 header, up to and including the record count.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength` counts: baseOffset and batchLength themselves.
pub const LOG_OVERHEAD: usize = 12;
/// The smallest possible record: length, attributes, timestampDelta, offsetDelta, keyLength,
/// valueLength and header count, each one byte. Bounds the record count of an uncompressed
/// batch by its length, so a forged count can never make a decoder reserve gigabytes.
pub const MIN_RECORD_LEN: usize = 7;
const CRC_START: usize = 21;
const MAGIC_V2: i8 = 2;

/// Why a batch was refused. Each maps to one Kafka error code in the broker
/// (`CORRUPT_MESSAGE`, `MESSAGE_TOO_LARGE`, `INVALID_RECORD`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("batch of {len} bytes is shorter than the {HEADER_LEN}-byte v2 header")]
    TooShort { len: usize },
    #[error("batchLength {declared} does not match the {actual} bytes given")]
    LengthMismatch { declared: i64, actual: usize },
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("magic byte {0} is not 2 (only RecordBatch v2 is stored)")]
    BadMagic(i8),
    #[error("CRC32C mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("record count {count} does not agree with lastOffsetDelta {last_offset_delta}")]
    CountMismatch { count: i32, last_offset_delta: i32 },
    #[error("record count {count} cannot fit in {records_len} bytes of uncompressed records")]
    CountTooLarge { count: i32, records_len: usize },
}

/// The header fields storage needs, read without decoding any record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Total bytes of the batch on disk (`batchLength` + 12).
    pub size: usize,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header at the start of `bytes`. Checks only that the 61 bytes exist and
    /// that `batchLength` is plausible; [`validate`] checks the rest.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < HEADER_LEN {
            return Err(BatchError::TooShort { len: bytes.len() });
        }
        let batch_length = i32_at(bytes, 8);
        if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::LengthMismatch {
                declared: i64::from(batch_length),
                actual: bytes.len(),
            });
        }
        Ok(Self {
            base_offset: i64_at(bytes, 0),
            size: batch_length as usize + LOG_OVERHEAD,
            partition_leader_epoch: i32_at(bytes, 12),
            magic: bytes[16] as i8,
            crc: u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes")),
            attributes: i16::from_be_bytes(bytes[21..23].try_into().expect("2 bytes")),
            last_offset_delta: i32_at(bytes, 23),
            base_timestamp: i64_at(bytes, 27),
            max_timestamp: i64_at(bytes, 35),
            producer_id: i64_at(bytes, 43),
            producer_epoch: i16::from_be_bytes(bytes[51..53].try_into().expect("2 bytes")),
            base_sequence: i32_at(bytes, 53),
            record_count: i32_at(bytes, 57),
        })
    }

    /// The offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> u8 {
        (self.attributes & 0x7) as u8
    }

    /// Control batches (transaction markers) carry no user records.
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Validates one whole batch: exactly `bytes.len()` long, magic 2, CRC32C over attributes
/// to the end, record count consistent with `lastOffsetDelta` and (uncompressed) with the
/// length, and no larger than `max_size`. Returns the parsed header.
pub fn validate(bytes: &[u8], max_size: usize) -> Result<BatchHeader, BatchError> {
    check(bytes, max_size, true)
}

/// [`validate`] without the CRC32C: for a batch whose CRC this process has verified or
/// computed already (a leader's own proposal, checked when it was produced), so its bytes
/// are not read once more for nothing.
pub fn validate_framing(bytes: &[u8], max_size: usize) -> Result<BatchHeader, BatchError> {
    check(bytes, max_size, false)
}

fn check(bytes: &[u8], max_size: usize, crc: bool) -> Result<BatchHeader, BatchError> {
    if bytes.len() > max_size {
        return Err(BatchError::TooLarge {
            size: bytes.len(),
            max: max_size,
        });
    }
    let header = BatchHeader::parse(bytes)?;
    if header.size != bytes.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.size as i64 - LOG_OVERHEAD as i64,
            actual: bytes.len(),
        });
    }
    if header.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic(header.magic));
    }
    if crc {
        let actual = crc32c::crc32c(&bytes[CRC_START..]);
        if actual != header.crc {
            return Err(BatchError::CrcMismatch {
                expected: header.crc,
                actual,
            });
        }
    }
    // Producers always write lastOffsetDelta = count - 1; a batch that disagrees would make
    // the log assign offsets that the records inside do not have.
    if header.record_count < 1 || header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::CountMismatch {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let records_len = bytes.len() - HEADER_LEN;
    if header.compression() == 0 && header.record_count as usize > records_len / MIN_RECORD_LEN {
        return Err(BatchError::CountTooLarge {
            count: header.record_count,
            records_len,
        });
    }
    Ok(header)
}

/// Checks only the CRC of a batch already known to be well framed: what the read path does
/// before serving stored bytes, so that a flipped bit on disk is never served.
pub fn crc_ok(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN
        && crc32c::crc32c(&bytes[CRC_START..])
            == u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes"))
}

/// Writes the base offset in place. It is outside the CRC, so the batch stays valid.
pub fn set_base_offset(bytes: &mut [u8], base_offset: i64) {
    bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the partition leader epoch (the Raft term) in place; also outside the CRC.
pub fn set_partition_leader_epoch(bytes: &mut [u8], epoch: i32) {
    bytes[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// One record of an uncompressed batch, borrowed from the batch bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset_delta: i32,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// The records of an uncompressed batch, in order. `None` for compressed batches, whose
/// records storage does not decompress, and for records that do not parse. Headers are
/// skipped.
pub fn records(bytes: &[u8]) -> Option<Vec<Record<'_>>> {
    let header = BatchHeader::parse(bytes).ok()?;
    if header.compression() != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(header.record_count.clamp(0, 4096) as usize);
    let mut rest = bytes.get(HEADER_LEN..header.size.min(bytes.len()))?;
    for _ in 0..header.record_count {
        let (len, n) = varint(rest)?;
        let body = rest.get(n..n + usize::try_from(len).ok()?)?;
        // attributes (1 byte), timestampDelta (varlong), offsetDelta (varint), key, value
        let mut at = 1;
        let (ts_delta, m) = varint(body.get(at..)?)?;
        at += m;
        let (offset_delta, m) = varint(body.get(at..)?)?;
        at += m;
        let (key, m) = bytes_field(body.get(at..)?)?;
        at += m;
        let (value, _) = bytes_field(body.get(at..)?)?;
        out.push(Record {
            offset_delta: i32::try_from(offset_delta).ok()?,
            timestamp: header.base_timestamp + ts_delta,
            key,
            value,
        });
        rest = &rest[n + len as usize..];
    }
    Some(out)
}

/// A varint length (-1 for null) followed by that many bytes.
fn bytes_field(b: &[u8]) -> Option<(Option<&[u8]>, usize)> {
    let (len, n) = varint(b)?;
    if len < 0 {
        return Some((None, n));
    }
    let len = usize::try_from(len).ok()?;
    Some((Some(b.get(n..n + len)?), n + len))
}

/// Timestamps of the records of an uncompressed batch, in order, as (offset delta,
/// timestamp); `None` as for [`records`]. Used by `offset_for_timestamp` to find the exact
/// first record at or after a time.
pub fn record_timestamps(bytes: &[u8]) -> Option<Vec<(i32, i64)>> {
    Some(
        records(bytes)?
            .iter()
            .map(|r| (r.offset_delta, r.timestamp))
            .collect(),
    )
}

/// A zigzag varint/varlong as Kafka writes them; returns the value and the bytes used.
pub fn varint(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, b) in bytes.iter().take(10).enumerate() {
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), i + 1));
        }
    }
    None
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `batch` with its records replaced by `records` and its codec (attribute bits 0-2) set to
/// `codec`, every other header field and attribute bit kept; length and CRC recomputed.
/// What a broker recompressing a batch to the topic's `compression.type` writes.
pub fn rewrap(batch: &[u8], codec: u8, records: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + records.len());
    b.extend_from_slice(&batch[..HEADER_LEN]);
    b.extend_from_slice(records);
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let attributes = (i16_at(&b, 21) & !0x07) | i16::from(codec & 0x07);
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Builds valid uncompressed v2 batches: for tests and benchmarks, and for the control
/// batches the broker writes itself. Not a general encoder (clients build real batches).
pub mod build {
    use super::*;

    /// One uncompressed batch of `values`, base offset 0, timestamps `timestamp_ms + i`.
    pub fn batch(values: &[&[u8]], timestamp_ms: i64) -> Vec<u8> {
        let records: Vec<(Option<&[u8]>, &[u8])> = values.iter().map(|v| (None, *v)).collect();
        with_records(&records, timestamp_ms, 0)
    }

    /// A control batch (attributes bit 5) holding one record: what Kafka writes for
    /// transaction markers and KRaft for leader changes. Consumers skip control batches.
    pub fn control_batch(key: &[u8], value: &[u8], timestamp_ms: i64) -> Vec<u8> {
        with_records(&[(Some(key), value)], timestamp_ms, 0x20)
    }

    /// `plain` with its records replaced by `records` (compressed, or damaged) and its
    /// codec set to `codec`; length and CRC recomputed, so only the records are wrong when
    /// they are.
    pub fn with_codec(plain: &[u8], codec: u8, records: &[u8]) -> Vec<u8> {
        super::rewrap(plain, codec, records)
    }

    /// `batch` as an idempotent producer sends it: producer id, epoch and base sequence
    /// set, CRC recomputed.
    pub fn idempotent(batch: &[u8], producer_id: i64, epoch: i16, base_sequence: i32) -> Vec<u8> {
        let mut out = batch.to_vec();
        out[43..51].copy_from_slice(&producer_id.to_be_bytes());
        out[51..53].copy_from_slice(&epoch.to_be_bytes());
        out[53..57].copy_from_slice(&base_sequence.to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// One uncompressed batch of (key, value) records with the given attributes.
    pub fn with_records(
        records_in: &[(Option<&[u8]>, &[u8])],
        timestamp_ms: i64,
        attributes: i16,
    ) -> Vec<u8> {
        assert!(!records_in.is_empty(), "a batch holds at least one record");
        let mut records = Vec::new();
        for (i, (key, value)) in records_in.iter().enumerate() {
            let mut body = Vec::with_capacity(value.len() + 16);
            body.push(0); // attributes
            put_varint(&mut body, i as i64); // timestampDelta
            put_varint(&mut body, i as i64); // offsetDelta
            match key {
                Some(k) => {
                    put_varint(&mut body, k.len() as i64);
                    body.extend_from_slice(k);
                }
                None => put_varint(&mut body, -1),
            }
            put_varint(&mut body, value.len() as i64);
            body.extend_from_slice(value);
            put_varint(&mut body, 0); // no headers
            put_varint(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
        let count = records_in.len() as i32;
        let mut out = Vec::with_capacity(HEADER_LEN + records.len());
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&[0; 4]); // crc, filled below
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&(count - 1).to_be_bytes());
        out.extend_from_slice(&timestamp_ms.to_be_bytes());
        out.extend_from_slice(&(timestamp_ms + i64::from(count) - 1).to_be_bytes());
        out.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
        out.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        out.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&records);
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_batch_validates_and_reports_its_fields() {
        let b = build::batch(&[b"a", b"bb", b"ccc"], 1_000);
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.max_timestamp, 1_002);
        assert_eq!(h.size, b.len());
        assert_eq!(
            record_timestamps(&b).unwrap(),
            vec![(0, 1_000), (1, 1_001), (2, 1_002)]
        );
        let keyed = build::with_records(&[(Some(b"k"), b"v1"), (None, b"")], 7, 0);
        let rs = records(&keyed).unwrap();
        assert_eq!(
            (rs[0].key, rs[0].value),
            (Some(&b"k"[..]), Some(&b"v1"[..]))
        );
        assert_eq!(
            (rs[1].key, rs[1].value, rs[1].offset_delta),
            (None, Some(&b""[..]), 1)
        );
    }

    #[test]
    fn patching_offset_and_epoch_keeps_the_crc_valid() {
        let mut b = build::batch(&[b"x"], 5);
        set_base_offset(&mut b, 42);
        set_partition_leader_epoch(&mut b, 7);
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (42, 7));
    }

    #[test]
    fn every_corruption_is_refused_with_its_own_error() {
        let good = build::batch(&[b"hello", b"world"], 0);
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            validate(&flipped, 1 << 20),
            Err(BatchError::CrcMismatch { .. })
        ));
        let mut magic = good.clone();
        magic[16] = 1;
        assert_eq!(validate(&magic, 1 << 20), Err(BatchError::BadMagic(1)));
        assert!(matches!(
            validate(&good[..good.len() - 1], 1 << 20),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            validate(&good, 10),
            Err(BatchError::TooLarge { .. })
        ));
        assert!(matches!(
            validate(&good[..20], 1 << 20),
            Err(BatchError::TooShort { .. })
        ));
    }

    proptest::proptest! {
        /// Any bytes at all: validation and record parsing answer, never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = validate(&bytes, 1 << 20);
            let _ = records(&bytes);
            let _ = BatchHeader::parse(&bytes);
        }

        /// A valid batch with one byte changed anywhere the CRC covers is refused.
        #[test]
        fn any_flip_under_the_crc_is_refused(at in 21usize..200, flip in 1u8..=255) {
            let b = build::batch(&[b"some value bytes", b"and more of them"], 9);
            let mut c = b.clone();
            let at = at % b.len();
            proptest::prop_assume!(at >= CRC_START);
            c[at] ^= flip;
            proptest::prop_assert!(validate(&c, 1 << 20).is_err());
        }
    }

    #[test]
    fn a_forged_record_count_is_refused_even_with_a_valid_crc() {
        // The kafka-protocol decoder would reserve i32::MAX records for this batch.
        let mut b = build::batch(&[b"x"], 0);
        b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        b[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::CountTooLarge { .. })
        ));
        let mut c = build::batch(&[b"x", b"y"], 0);
        c[23..27].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&c[CRC_START..]);
        c[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&c, 1 << 20),
            Err(BatchError::CountMismatch { .. })
        ));
    }
}
