//! The sparse index of a segment: one fixed-size entry per `index_interval_bytes` of log,
//! serving both offset lookups (offset -> file position) and timestamp lookups.
//!
//! Fixed-size entries rather than rkyv: an entry is four integers, appended one at a time
//! and read as a flat array; a per-entry CRC lets recovery keep exactly the valid prefix
//! of a torn index. Layout (little-endian, 20 bytes), see docs/internals/segment-format.md:
//!
//! ```text
//! 0  relative_offset u32   offset of the batch starting here, minus the segment base
//! 4  position u32          byte position of that batch in the .log file
//! 8  max_timestamp_before i64  largest record timestamp at any lower offset of the segment
//!                              (i64::MIN if none)
//! 16 crc32c u32            of bytes 0..16
//! ```

pub(crate) const ENTRY_LEN: usize = 20;
/// "No timestamp yet": below every real timestamp, so `max` works without a special case.
pub(crate) const NO_TIMESTAMP: i64 = i64::MIN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
    pub(crate) max_timestamp_before: i64,
}

impl IndexEntry {
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.position.to_le_bytes());
        out[8..16].copy_from_slice(&self.max_timestamp_before.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..16]);
        out[16..20].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
        if crc32c::crc32c(&b[0..16]) != crc {
            return None;
        }
        Some(Self {
            relative_offset: u32::from_le_bytes(b[0..4].try_into().ok()?),
            position: u32::from_le_bytes(b[4..8].try_into().ok()?),
            max_timestamp_before: i64::from_le_bytes(b[8..16].try_into().ok()?),
        })
    }
}

/// Decodes the valid prefix of an index file: entries with a good CRC whose offsets and
/// positions strictly increase (timestamps never decrease). Returns the entries and
/// whether everything after them is zero padding (a clean file needs no rewrite).
pub(crate) fn decode_all(bytes: &[u8]) -> (Vec<IndexEntry>, bool) {
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / ENTRY_LEN);
    let mut used = 0;
    for chunk in bytes.chunks_exact(ENTRY_LEN) {
        let Some(e) = IndexEntry::decode(chunk) else {
            break;
        };
        if let Some(prev) = entries.last() {
            if e.relative_offset <= prev.relative_offset
                || e.position <= prev.position
                || e.max_timestamp_before < prev.max_timestamp_before
            {
                break;
            }
        } else if e.relative_offset != 0 || e.position != 0 {
            break; // the first batch of a segment always has an entry
        }
        entries.push(e);
        used += ENTRY_LEN;
    }
    let clean = bytes[used..].iter().all(|&b| b == 0);
    (entries, clean)
}

/// The last entry at or below `relative_offset` (entries are sorted).
pub(crate) fn floor_by_offset(entries: &[IndexEntry], relative_offset: u32) -> Option<&IndexEntry> {
    let i = entries.partition_point(|e| e.relative_offset <= relative_offset);
    i.checked_sub(1).map(|i| &entries[i])
}

/// The last entry all of whose lower offsets are older than `timestamp`: scanning from
/// it finds the first record at or after `timestamp`.
pub(crate) fn floor_by_timestamp(entries: &[IndexEntry], timestamp: i64) -> Option<&IndexEntry> {
    let i = entries.partition_point(|e| e.max_timestamp_before < timestamp);
    i.checked_sub(1).map(|i| &entries[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(o: u32, p: u32, t: i64) -> IndexEntry {
        IndexEntry {
            relative_offset: o,
            position: p,
            max_timestamp_before: t,
        }
    }

    #[test]
    fn decode_keeps_the_valid_prefix_only() {
        let good = [e(0, 0, NO_TIMESTAMP), e(5, 4100, 10), e(9, 9000, 12)];
        let mut bytes: Vec<u8> = good.iter().flat_map(|x| x.encode()).collect();
        bytes.extend_from_slice(&[0; 40]);
        assert_eq!(decode_all(&bytes), (good.to_vec(), true));
        bytes[ENTRY_LEN + 3] ^= 0x10; // corrupt the second entry
        assert_eq!(decode_all(&bytes), (good[..1].to_vec(), false));
        let unordered: Vec<u8> = [e(0, 0, 1), e(0, 10, 1)]
            .iter()
            .flat_map(|x| x.encode())
            .collect();
        assert_eq!(decode_all(&unordered).0.len(), 1);
    }

    #[test]
    fn floors_find_the_scan_start() {
        let es = [e(0, 0, NO_TIMESTAMP), e(5, 4100, 10), e(9, 9000, 12)];
        assert_eq!(floor_by_offset(&es, 4).unwrap().relative_offset, 0);
        assert_eq!(floor_by_offset(&es, 5).unwrap().relative_offset, 5);
        assert_eq!(floor_by_offset(&es, 100).unwrap().relative_offset, 9);
        assert_eq!(floor_by_timestamp(&es, 10).unwrap().relative_offset, 0);
        assert_eq!(floor_by_timestamp(&es, 11).unwrap().relative_offset, 5);
        assert_eq!(floor_by_timestamp(&es, 13).unwrap().relative_offset, 9);
    }
}
