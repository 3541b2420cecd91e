//! Record-level validation of a produced v2 batch, before it takes an offset: what Kafka's
//! LogValidator checks, so that no batch a consumer cannot read is ever stored.
//!
//! The records are walked in place (uncompressed) or from a decompressing stream
//! (gzip, snappy, lz4, zstd) capped at [`MAX_DECOMPRESSED`] bytes, one record at a time;
//! nothing is built but a reusable buffer of one record. The stored bytes stay the batch as
//! produced.

use std::io::{BufReader, Read};

use corelog_storage::batch::{BatchHeader, HEADER_LEN, varint};

/// The most one batch may decompress to (128 MiB: 128 times Kafka's default
/// `message.max.bytes`). Beyond it the batch is refused; a decompression bomb costs at
/// most this much CPU and never this much memory (records are read one at a time).
pub const MAX_DECOMPRESSED: u64 = 128 << 20;

/// Largest zstd window accepted (2^24 = 16 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// What was learnt from the records: their timestamps' range, for the timestamp checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    pub min_timestamp: i64,
    pub max_timestamp: i64,
}

/// Why a batch's records were refused (INVALID_RECORD, as Kafka answers them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecords(pub String);

impl std::fmt::Display for BadRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(why: impl Into<String>) -> BadRecords {
    BadRecords(why.into())
}

/// Walks every record of a batch already checked by `batch::validate` (framing, CRC,
/// count against lastOffsetDelta).
pub fn validate(bytes: &[u8], h: &BatchHeader) -> Result<Walked, BadRecords> {
    walk(bytes, h, None).map(|(w, _)| w)
}

/// The records [`validate_keeping`] kept, for a broker that recompresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The batch is uncompressed: its records are its own bytes after the header.
    Plain,
    /// The records, decompressed (length-prefixed, as in an uncompressed batch).
    Records(Vec<u8>),
    /// They decompress to more than the limit: nothing past it was kept (the walk went on
    /// holding one record at a time, so the batch was still validated).
    TooLarge,
}

impl Kept {
    /// The records of `batch` this stands for (panics on `TooLarge`: nothing was kept).
    pub fn records_or<'a>(&'a self, batch: &'a [u8]) -> &'a [u8] {
        match self {
            Self::Plain => &batch[HEADER_LEN..],
            Self::Records(r) => r,
            Self::TooLarge => panic!("the records were not kept: past the limit"),
        }
    }
}

/// [`validate`], also keeping the records decompressed when the batch is compressed, up to
/// `limit` bytes, for a topic whose `compression.type` makes the broker recompress.
pub fn validate_keeping(
    bytes: &[u8],
    h: &BatchHeader,
    limit: usize,
) -> Result<(Walked, Kept), BadRecords> {
    walk(bytes, h, Some(limit))
}

/// The walk; with `keep`, the decompressed records too (`Plain` when not kept).
fn walk(bytes: &[u8], h: &BatchHeader, keep: Option<usize>) -> Result<(Walked, Kept), BadRecords> {
    let records = &bytes[HEADER_LEN..];
    let mut w = Walker::new(h);
    if let Some(limit) = keep.filter(|_| h.compression() != 0) {
        w.keep_limit = limit;
        w.kept = Some(Some(Vec::with_capacity(
            (records.len() * 4)
                .min(limit)
                .min(MAX_DECOMPRESSED as usize),
        )));
    }
    match h.compression() {
        0 => {
            let mut rest = records;
            for i in 0..h.record_count {
                let (len, n) =
                    varint(rest).ok_or_else(|| bad(format!("record {i}: bad length")))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= rest.len() - n)
                    .ok_or_else(|| bad(format!("record {i}: length {len} runs past the batch")))?;
                w.record(i, &rest[n..n + len])?;
                rest = &rest[n + len..];
            }
            if !rest.is_empty() {
                return Err(bad(format!("{} bytes after the last record", rest.len())));
            }
        }
        1 => w.stream(flate2::read::GzDecoder::new(records))?,
        2 => {
            if records.starts_with(XERIAL_MAGIC) {
                w.stream(Xerial::new(records))?
            } else {
                w.stream(snap_raw(records)?.as_slice())?
            }
        }
        3 => w.stream(lz4_flex::frame::FrameDecoder::new(records))?,
        4 => {
            let mut d = zstd::stream::read::Decoder::with_buffer(records)
                .map_err(|e| bad(format!("zstd: {e}")))?;
            // The window a frame asks for is allocated up front: at most 16 MiB (zstd
            // sizes windows to the input, and producers compress batches of a few MiB).
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| bad(format!("zstd: {e}")))?;
            w.stream(d)?
        }
        c => return Err(bad(format!("unknown compression codec {c}"))),
    }
    let kept = match w.kept.take() {
        None => Kept::Plain,
        Some(Some(r)) => Kept::Records(r),
        Some(None) => Kept::TooLarge,
    };
    Ok((w.done(), kept))
}

struct Walker {
    base_timestamp: i64,
    count: i32,
    min_ts: i64,
    max_ts: i64,
    buf: Vec<u8>,
    /// The decompressed records (length-prefixed as in a batch), when asked for; `None`
    /// inside once they pass `keep_limit`.
    kept: Option<Option<Vec<u8>>>,
    keep_limit: usize,
}

impl Walker {
    fn new(h: &BatchHeader) -> Self {
        Self {
            base_timestamp: h.base_timestamp,
            count: h.record_count,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            buf: Vec::new(),
            kept: None,
            keep_limit: 0,
        }
    }

    fn done(self) -> Walked {
        Walked {
            min_timestamp: self.min_ts,
            max_timestamp: self.max_ts,
        }
    }

    /// Reads `count` records from a decompressing stream, then requires its end.
    fn stream(&mut self, r: impl Read) -> Result<(), BadRecords> {
        let mut r = BufReader::new(r.take(MAX_DECOMPRESSED + 1));
        let mut total: u64 = 0;
        for i in 0..self.count {
            let len = read_varint(&mut r).map_err(|e| bad(format!("record {i}: {e}")))?;
            let len = u64::try_from(len)
                .map_err(|_| bad(format!("record {i}: negative length {len}")))?;
            total += len;
            if total > MAX_DECOMPRESSED {
                return Err(bad(format!(
                    "records decompress to more than {MAX_DECOMPRESSED} bytes"
                )));
            }
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            // Grows with what the stream yields, not with the length it claims.
            (&mut r)
                .take(len)
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("record {i}: decompression failed: {e}")))?;
            if buf.len() as u64 != len {
                return Err(bad(format!(
                    "record {i}: the compressed stream ends inside it"
                )));
            }
            self.record(i, &buf)?;
            if let Some(slot) = &mut self.kept {
                if let Some(kept) = slot {
                    if kept.len() + buf.len() + 10 > self.keep_limit {
                        *slot = None; // past the limit: stop holding, keep validating
                    } else {
                        put_varint(kept, len as i64);
                        kept.extend_from_slice(&buf);
                    }
                }
            }
            self.buf = buf;
        }
        let mut one = [0u8; 1];
        match r.read(&mut one) {
            Ok(0) => Ok(()),
            Ok(_) => Err(bad("bytes after the last record")),
            Err(e) => Err(bad(format!("decompression failed: {e}"))),
        }
    }

    /// One record's body (after its length): attributes, timestampDelta, offsetDelta (must
    /// be its index: producers number records 0..n-1), key, value, headers, and nothing
    /// after them.
    fn record(&mut self, i: i32, rec: &[u8]) -> Result<(), BadRecords> {
        let e = |what: &str| bad(format!("record {i}: {what}"));
        let mut at = 1usize; // attributes (unused in v2)
        if rec.is_empty() {
            return Err(e("empty"));
        }
        let (ts_delta, n) = varint(&rec[at..]).ok_or_else(|| e("bad timestamp delta"))?;
        at += n;
        let (offset_delta, n) = varint(&rec[at..]).ok_or_else(|| e("bad offset delta"))?;
        at += n;
        if offset_delta != i64::from(i) {
            return Err(e(&format!("offset delta {offset_delta}, expected {i}")));
        }
        at += field(&rec[at..], true).ok_or_else(|| e("bad key"))?;
        at += field(&rec[at..], true).ok_or_else(|| e("bad value"))?;
        let (headers, n) = varint(&rec[at..]).ok_or_else(|| e("bad header count"))?;
        at += n;
        if headers < 0 || headers as usize > rec.len() - at {
            return Err(e(&format!("header count {headers}")));
        }
        for _ in 0..headers {
            at += field(&rec[at..], false).ok_or_else(|| e("bad header key"))?;
            at += field(&rec[at..], true).ok_or_else(|| e("bad header value"))?;
        }
        if at != rec.len() {
            return Err(e(&format!("{} bytes after its fields", rec.len() - at)));
        }
        let ts = self.base_timestamp.saturating_add(ts_delta);
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
        Ok(())
    }
}

/// A varint length and that many bytes (null, -1, when `nullable`); returns bytes used.
fn field(b: &[u8], nullable: bool) -> Option<usize> {
    let (len, n) = varint(b)?;
    if len == -1 && nullable {
        return Some(n);
    }
    let len = usize::try_from(len).ok()?;
    (len <= b.len() - n).then_some(n + len)
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A topic's `compression.type` other than `producer`: the codec stored batches must
/// have, and its level (`compression.<codec>.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recompress {
    pub codec: u8,
    pub level: i32,
}

/// snappy-java's block size: what Kafka's own broker writes (xerial framing, which every
/// client reads, Java's included).
const XERIAL_BLOCK: usize = 32 << 10;

/// Compresses length-prefixed records with `to`'s codec, as a batch's records section.
pub fn compress(to: Recompress, plain: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let io = |e: std::io::Error| e.to_string();
    Ok(match to.codec {
        0 => plain.to_vec(),
        1 => {
            // -1 is gzip's own default (6).
            let level = match to.level {
                1..=9 => flate2::Compression::new(to.level as u32),
                _ => flate2::Compression::default(),
            };
            let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(plain.len() / 2), level);
            e.write_all(plain).map_err(io)?;
            e.finish().map_err(io)?
        }
        2 => {
            let mut out = Vec::with_capacity(plain.len() / 2 + XERIAL_HEADER);
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes()); // version
            out.extend_from_slice(&1i32.to_be_bytes()); // compatible version
            let mut enc = snap::raw::Encoder::new();
            for block in plain.chunks(XERIAL_BLOCK) {
                let c = enc.compress_vec(block).map_err(|e| e.to_string())?;
                out.extend_from_slice(&(c.len() as u32).to_be_bytes());
                out.extend_from_slice(&c);
            }
            out
        }
        3 => {
            // Independent 64 KiB blocks, no content size: the frame Kafka's Java reader
            // (KafkaLZ4BlockInputStream) accepts. lz4_flex has one (fast) level.
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(
                info,
                Vec::with_capacity(plain.len() / 2),
            );
            e.write_all(plain).map_err(io)?;
            e.finish().map_err(|e| e.to_string())?
        }
        4 => zstd::bulk::compress(plain, to.level).map_err(io)?,
        c => return Err(format!("unknown compression codec {c}")),
    })
}

fn read_varint(r: &mut impl Read) -> Result<i64, String> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        match r.read(&mut b) {
            Ok(1) => {}
            Ok(_) => return Err("the compressed stream ends early".into()),
            Err(e) => return Err(format!("decompression failed: {e}")),
        }
        raw |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    Err("bad length varint".into())
}

/// snappy-java's framing (what Java producers write): magic, version, compatible version,
/// then blocks of `[i32 BE length][raw snappy]`.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER: usize = 16;

/// Snappy cannot expand more than this (a 64-byte copy in a 3-byte element, about 21x):
/// a block claiming more is forged, and is refused before its claim is allocated.
const SNAPPY_MAX_RATIO: usize = 22;

/// One raw snappy block, after checking the size it claims against what its compressed
/// size allows and against the cap (the decoder allocates the claim up front).
fn snap_raw(block: &[u8]) -> Result<Vec<u8>, BadRecords> {
    let n = snap::raw::decompress_len(block).map_err(|e| bad(format!("snappy: {e}")))?;
    if n as u64 > MAX_DECOMPRESSED || n > block.len() * SNAPPY_MAX_RATIO + 64 {
        return Err(bad(format!(
            "snappy block of {} bytes claims {n} bytes",
            block.len()
        )));
    }
    snap::raw::Decoder::new()
        .decompress_vec(block)
        .map_err(|e| bad(format!("snappy: {e}")))
}

/// Reads xerial-framed snappy as a stream, one block at a time.
struct Xerial<'a> {
    rest: &'a [u8],
    block: Vec<u8>,
    at: usize,
}

impl<'a> Xerial<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            rest: data.get(XERIAL_HEADER..).unwrap_or(&[]),
            block: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Xerial<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.block.len() {
            if self.rest.is_empty() {
                return Ok(0);
            }
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
            if self.rest.len() < 4 {
                return Err(invalid("truncated xerial block length".into()));
            }
            let len = u32::from_be_bytes(self.rest[..4].try_into().expect("4 bytes")) as usize;
            let block = self.rest.get(4..4 + len).ok_or_else(|| {
                invalid(format!("xerial block of {len} bytes runs past the batch"))
            })?;
            self.block = snap_raw(block).map_err(|e| invalid(e.0))?;
            self.at = 0;
            self.rest = &self.rest[4 + len..];
        }
        let n = out.len().min(self.block.len() - self.at);
        out[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corelog_storage::batch::build;
    use std::io::Write;

    /// The batch `build::batch(values)` with its records compressed by `codec`.
    fn compressed(values: &[&[u8]], codec: u8, compress: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let plain = build::batch(values, 1_700_000_000_000);
        build::with_codec(&plain, codec, &compress(&plain[HEADER_LEN..]))
    }

    fn check(b: &[u8]) -> Result<Walked, BadRecords> {
        let h = corelog_storage::batch::validate(b, usize::MAX).expect("well framed");
        validate(b, &h)
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }
    fn snappy(b: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(b).unwrap()
    }
    fn xerial(b: &[u8]) -> Vec<u8> {
        let mut out = XERIAL_MAGIC.to_vec();
        out.extend(1i32.to_be_bytes());
        out.extend(1i32.to_be_bytes());
        for chunk in b.chunks(7) {
            let c = snappy(chunk);
            out.extend((c.len() as i32).to_be_bytes());
            out.extend(c);
        }
        out
    }
    fn lz4(b: &[u8]) -> Vec<u8> {
        let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }
    fn zstd(b: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(b, 1).unwrap()
    }

    type Codec = (u8, fn(&[u8]) -> Vec<u8>);
    const CODECS: [Codec; 5] = [(1, gzip), (2, snappy), (2, xerial), (3, lz4), (4, zstd)];

    #[test]
    fn valid_batches_pass_for_every_codec() {
        let values: [&[u8]; 3] = [b"alpha", b"", b"gamma-gamma"];
        let plain = build::batch(&values, 1_700_000_000_000);
        let w = check(&plain).unwrap();
        assert_eq!(w.min_timestamp, 1_700_000_000_000);
        for (codec, f) in CODECS {
            assert_eq!(
                check(&compressed(&values, codec, f)),
                Ok(w),
                "codec {codec}"
            );
        }
    }

    #[test]
    fn garbage_truncation_and_miscounts_are_refused_for_every_codec() {
        let values: [&[u8]; 3] = [b"alpha", b"beta", b"gamma"];
        let plain = build::batch(&values, 0);
        let records = &plain[HEADER_LEN..];
        for (codec, f) in CODECS {
            let garbage = build::with_codec(&plain, codec, &[0x5a; 40]);
            assert!(check(&garbage).is_err(), "codec {codec}: garbage");
            let whole = f(records);
            let cut = build::with_codec(&plain, codec, &whole[..whole.len() * 2 / 3]);
            assert!(check(&cut).is_err(), "codec {codec}: truncated stream");
            // Two records where the header says three.
            let short = f(&records[..records.len() - 7]);
            assert!(
                check(&build::with_codec(&plain, codec, &short)).is_err(),
                "codec {codec}"
            );
            // ... and garbage compressed validly.
            let junk = build::with_codec(&plain, codec, &f(&[0x33; 64]));
            assert!(check(&junk).is_err(), "codec {codec}: compressed garbage");
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_cap() {
        // One record claiming 1 GiB of zeros: refused on its length, before inflating it.
        let plain = build::batch(&[b"x"], 0);
        let mut records = Vec::new();
        let len: i64 = 1 << 30;
        let mut z = ((len << 1) ^ (len >> 63)) as u64;
        while z >= 0x80 {
            records.push((z as u8) | 0x80);
            z >>= 7;
        }
        records.push(z as u8);
        records.extend(std::iter::repeat_n(0u8, 1 << 20));
        for (codec, f) in CODECS {
            let b = build::with_codec(&plain, codec, &f(&records));
            let t = std::time::Instant::now();
            let e = check(&b).unwrap_err();
            assert!(e.0.contains("more than"), "codec {codec}: {e}");
            assert!(t.elapsed() < std::time::Duration::from_secs(5));
        }
    }

    /// Fuzz finding (target `batch`): a 128-byte snappy batch whose block claims 16 MiB
    /// made the decoder allocate the claim up front. The input gets the target's fix-ups
    /// (length, magic, codec from the first byte, CRC).
    #[test]
    fn regression_snappy_block_claiming_16_mib() {
        let data = include_bytes!("../tests/fuzz_regressions/batch-snappy-claims-16mb");
        let mut b = data[1..].to_vec();
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[16] = 2;
        b[21..23].copy_from_slice(&i16::from(data[0] % 5).to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let e = check(&b).unwrap_err();
        assert!(e.0.contains("claims"), "{e}");
    }

    #[test]
    fn records_must_be_numbered_and_fully_consumed() {
        let plain = build::batch(&[b"a", b"b"], 0);
        let mut b = plain.clone();
        // The second record's offset delta (0-based index 1 -> zigzag 2) set to 0.
        let second = HEADER_LEN + 1 + plain[HEADER_LEN] as usize / 2;
        assert_eq!(b[second + 3], 2);
        b[second + 3] = 0;
        let b = build::with_codec(&b, 0, &b[HEADER_LEN..]);
        assert!(check(&b).unwrap_err().0.contains("offset delta"));
    }

    #[test]
    fn compress_round_trips_every_codec_pair_and_keeps_the_header() {
        let values: Vec<Vec<u8>> = (0..40u8)
            .map(|i| {
                let mut v = vec![i; 2000 + i as usize * 37];
                v[0] = 255 - i;
                v
            })
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let plain = build::batch(&refs, 1_700_000_000_000);
        let records = &plain[HEADER_LEN..];
        let mut sources = vec![plain.clone()];
        sources.extend(
            CODECS
                .iter()
                .map(|(c, f)| build::with_codec(&plain, *c, &f(records))),
        );
        for src in &sources {
            let h = corelog_storage::batch::validate(src, usize::MAX).unwrap();
            let kept = validate_keeping(src, &h, 1 << 30).unwrap().1;
            let decompressed = kept.records_or(src);
            assert_eq!(decompressed, records, "codec {}", h.compression());
            for codec in 0..=4 {
                let to = Recompress {
                    codec,
                    level: if codec == 4 { 3 } else { -1 },
                };
                let out = corelog_storage::batch::rewrap(
                    src,
                    codec,
                    &compress(to, decompressed).unwrap(),
                );
                let oh = corelog_storage::batch::validate(&out, usize::MAX).unwrap();
                assert_eq!(oh.compression(), codec);
                assert_eq!(
                    (
                        oh.record_count,
                        oh.base_timestamp,
                        oh.max_timestamp,
                        oh.producer_id,
                        oh.base_sequence
                    ),
                    (
                        h.record_count,
                        h.base_timestamp,
                        h.max_timestamp,
                        h.producer_id,
                        h.base_sequence
                    )
                );
                let again = validate_keeping(&out, &oh, 1 << 30).unwrap().1;
                assert_eq!(
                    again.records_or(&out),
                    records,
                    "{} -> {codec}",
                    h.compression()
                );
                if codec != 0 {
                    assert!(
                        out.len() < plain.len() / 4,
                        "{} -> {codec}: {} bytes",
                        h.compression(),
                        out.len()
                    );
                }
            }
        }
        // Past the limit nothing more is held, and the batch still validates.
        let z = build::with_codec(&plain, 4, &zstd(records));
        let h = corelog_storage::batch::validate(&z, usize::MAX).unwrap();
        assert_eq!(validate_keeping(&z, &h, 10_000).unwrap().1, Kept::TooLarge);
        // Snappy is written xerial-framed, in 32 KiB blocks, as Kafka's broker writes it.
        let s = compress(Recompress { codec: 2, level: 0 }, records).unwrap();
        assert!(s.starts_with(XERIAL_MAGIC));
        // Other attribute bits survive a rewrap (bit 3: the timestamp type).
        let mut typed = plain.clone();
        typed[22] |= 0x08;
        let out = corelog_storage::batch::rewrap(&typed, 4, b"x");
        assert_eq!(i16::from_be_bytes([out[21], out[22]]), 0x08 | 4);
    }
}
