//! The newest batches a leader appended, shared with its shard's fetch path.
//!
//! A consumer at the head of a partition asks for what was committed a moment ago. Going
//! through the partition task would queue its fetch behind the round in progress (appends
//! and an fdatasync, milliseconds with large batches), and a consumer that waits that long
//! for at most a partition's worth of bytes falls behind producers that fill a round with
//! more; once behind, its reads come from the device, in line with the next rounds. So the
//! partition task keeps its newest batches here (the same `Bytes` it proposed, no copy)
//! and the shard answers fetches that fall inside them at once.
//!
//! Only committed batches (ending at or below the high watermark published with them) are
//! served: a committed batch never changes. The task empties this whenever it stops
//! leading or its term changes, before it publishes a new high watermark, so a batch from
//! a term whose uncommitted tail was replaced is never served under a newer watermark.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::frame::Records;

/// How many bytes of newest batches a leading partition keeps here: a few rounds of a
/// partition at disk speed, several of the largest (1 MiB) batches.
pub const RECENT_BYTES: usize = 8 << 20;

#[derive(Default)]
pub struct RecentBatches {
    /// The leader term the batches were proposed in.
    term: u32,
    /// (base offset, end offset, bytes), contiguous, oldest first.
    batches: VecDeque<(u64, u64, Bytes)>,
    bytes: usize,
}

impl RecentBatches {
    /// Adds the batch just proposed at `base..end` in `term`; starts afresh on a new term
    /// or a gap.
    pub fn push(&mut self, term: u32, base: u64, end: u64, batch: Bytes) {
        if term != self.term || self.batches.back().is_some_and(|&(_, e, _)| e != base) {
            self.clear(term);
        }
        self.bytes += batch.len();
        self.batches.push_back((base, end, batch));
        while self.bytes > RECENT_BYTES && self.batches.len() > 1 {
            let (_, _, b) = self.batches.pop_front().expect("len > 1");
            self.bytes -= b.len();
        }
    }

    /// Forgets every batch (leadership lost or moved to a new term).
    pub fn clear(&mut self, term: u32) {
        self.term = term;
        self.batches.clear();
        self.bytes = 0;
    }

    pub fn term(&self) -> u32 {
        self.term
    }

    /// Whole batches from the one holding `offset`, each ending at or below
    /// `high_watermark`, up to `max_bytes` (at least one batch, as Kafka serves); `None`
    /// when `offset` is not held here (the partition task answers then).
    /// The batches are handed out by reference (no copy): the response sends them as
    /// they are.
    pub fn read(&self, offset: u64, high_watermark: u64, max_bytes: usize) -> Option<Records> {
        let first = self.batches.front()?.0;
        if offset < first || offset >= high_watermark {
            return None;
        }
        let i = self.batches.partition_point(|&(_, end, _)| end <= offset);
        let mut picked = self
            .batches
            .range(i..)
            .take_while(|&&(_, end, _)| end <= high_watermark);
        let (_, _, one) = picked.next()?;
        let mut out = Records::from(one.clone());
        let mut total = one.len();
        for (_, _, b) in picked {
            total += b.len();
            if total > max_bytes {
                break;
            }
            out.push(b.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tag: u8, len: usize) -> Bytes {
        Bytes::from(vec![tag; len])
    }

    #[test]
    fn serves_only_committed_whole_batches_within_max_bytes() {
        let mut r = RecentBatches::default();
        r.push(3, 10, 20, batch(1, 100));
        r.push(3, 20, 30, batch(2, 100));
        r.push(3, 30, 40, batch(3, 100));
        // Below what is held, and at or past the high watermark: not answered here.
        assert!(r.read(9, 40, 1000).is_none());
        assert!(r.read(30, 30, 1000).is_none());
        // From inside the first batch, stopping before the uncommitted one.
        let got = r.read(15, 30, 1000).unwrap().to_bytes();
        assert_eq!(got.len(), 200);
        assert_eq!((got[0], got[199]), (1, 2));
        // max_bytes cuts at a batch boundary but always serves one.
        assert_eq!(r.read(10, 40, 150).unwrap().len(), 100);
        assert_eq!(r.read(10, 40, 1).unwrap().len(), 100);
        assert_eq!(r.read(20, 40, 1000).unwrap().len(), 200);
    }

    #[test]
    fn a_new_term_or_a_gap_starts_afresh_and_the_size_is_bounded() {
        let mut r = RecentBatches::default();
        r.push(1, 0, 10, batch(1, 10));
        r.push(2, 10, 20, batch(2, 10));
        assert!(r.read(5, 20, 100).is_none(), "the old term's batch is gone");
        r.push(2, 25, 30, batch(3, 10));
        assert!(r.read(10, 30, 100).is_none(), "a gap starts afresh");
        assert_eq!(r.read(25, 30, 100).unwrap().to_bytes()[0], 3);
        let big = RECENT_BYTES / 4 + 1;
        for i in 0..8u64 {
            r.push(2, 30 + i, 31 + i, batch(4, big));
        }
        assert!(r.bytes <= RECENT_BYTES && r.batches.len() == 3);
        r.clear(5);
        assert!(r.read(37, 38, 100).is_none());
        assert_eq!(r.term(), 5);
    }
}
