//! Idempotent-producer state of one partition, kept by the replica driver from the log
//! itself: every batch a replica appends (as leader or follower) is remembered, a
//! truncation forgets what it cut, and opening a replica rebuilds the table from the log.
//! So a follower that becomes leader knows every producer's sequence, and an idempotent
//! producer that retries to it after a failover gets its original offset, not a duplicate.
//!
//! Kafka's rules (`ProducerStateManager`): per producer id, the epoch and the last five
//! batches (a producer has at most five in flight); a retried batch among them is a
//! duplicate, answered with its first offset; the next sequence must follow the last one
//! (wrapping at `i32::MAX`); a new epoch starts at sequence 0; an older epoch is fenced.

use std::collections::{BTreeMap, VecDeque};

use corelog_storage::batch::BatchHeader;

use crate::Offset;

/// Batches kept per producer: Kafka's `max.in.flight.requests.per.connection` bound for
/// idempotence.
pub const HISTORY: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recent {
    first_seq: i32,
    last_seq: i32,
    base: Offset,
}

/// One producer id on this partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerState {
    pub epoch: i16,
    /// Recent batches of `epoch`, oldest first.
    recent: VecDeque<Recent>,
    /// The newest batch's max timestamp (DescribeProducers).
    pub last_timestamp: i64,
    /// Batches of this producer were dropped from `recent` (the history bound, or an epoch
    /// bump): a truncation that empties `recent` cannot tell what came before.
    older: bool,
}

impl ProducerState {
    /// The last sequence of the newest batch.
    pub fn last_sequence(&self) -> Option<i32> {
        self.recent.back().map(|r| r.last_seq)
    }

    /// The last offset of the newest batch.
    fn last_offset(&self) -> Option<Offset> {
        self.recent
            .back()
            .map(|r| r.base + r.last_seq.wrapping_sub(r.first_seq) as u32 as u64)
    }
}

/// What [`ProducerTable::check`] says of a batch before it is proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqCheck {
    Append,
    /// A retry of a batch the log holds at this base offset.
    Duplicate(Offset),
    /// An epoch older than the producer's (INVALID_PRODUCER_EPOCH).
    Fenced(String),
    /// A gap or a bad first sequence (OUT_OF_ORDER_SEQUENCE_NUMBER).
    OutOfOrder(String),
}

/// Every idempotent producer with batches in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: BTreeMap<i64, ProducerState>,
}

fn idempotent(h: &BatchHeader) -> bool {
    h.producer_id >= 0 && !h.is_control()
}

impl ProducerTable {
    pub fn get(&self, producer_id: i64) -> Option<&ProducerState> {
        self.producers.get(&producer_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &ProducerState)> {
        self.producers.iter().map(|(id, p)| (*id, p))
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Whether `h` (a batch not yet in the log) may be appended. Batches without a
    /// producer id always may.
    pub fn check(&self, h: &BatchHeader) -> SeqCheck {
        if !idempotent(h) {
            return SeqCheck::Append;
        }
        let Some(state) = self.producers.get(&h.producer_id) else {
            // A new producer id, or one whose batches are all gone: accept from here.
            return SeqCheck::Append;
        };
        if h.producer_epoch < state.epoch {
            return SeqCheck::Fenced(format!(
                "producer epoch {} is older than {}",
                h.producer_epoch, state.epoch
            ));
        }
        if h.producer_epoch > state.epoch {
            return if h.base_sequence == 0 {
                SeqCheck::Append
            } else {
                SeqCheck::OutOfOrder(format!(
                    "a new producer epoch must start at sequence 0, not {}",
                    h.base_sequence
                ))
            };
        }
        let last_seq = h.base_sequence.wrapping_add(h.last_offset_delta);
        if let Some(r) = state
            .recent
            .iter()
            .find(|r| r.first_seq == h.base_sequence && r.last_seq == last_seq)
        {
            return SeqCheck::Duplicate(r.base);
        }
        let expected = state
            .last_sequence()
            .map_or(0, |last| if last == i32::MAX { 0 } else { last + 1 });
        if h.base_sequence == expected {
            SeqCheck::Append
        } else {
            SeqCheck::OutOfOrder(format!(
                "sequence {} out of order: expected {expected}",
                h.base_sequence
            ))
        }
    }

    /// Records that the batch `h` sits at `base`. Idempotent: the leader remembers a batch
    /// when it proposes it (so the next request already sees it) and the driver again
    /// when it is appended; a batch at or below the producer's newest is already known.
    pub fn remember(&mut self, h: &BatchHeader, base: Offset) {
        if !idempotent(h) {
            return;
        }
        let state = self.producers.entry(h.producer_id).or_default();
        if state.recent.back().is_some_and(|r| r.base >= base) {
            return;
        }
        if h.producer_epoch != state.epoch {
            state.older |= !state.recent.is_empty();
            state.epoch = h.producer_epoch;
            state.recent.clear();
        }
        state.last_timestamp = h.max_timestamp;
        state.recent.push_back(Recent {
            first_seq: h.base_sequence,
            last_seq: h.base_sequence.wrapping_add(h.last_offset_delta),
            base,
        });
        while state.recent.len() > HISTORY {
            state.recent.pop_front();
            state.older = true;
        }
    }

    /// Remembers a stored batch (its base offset is in its header).
    pub fn on_batch(&mut self, batch: &[u8]) {
        if let Ok(h) = BatchHeader::parse(batch) {
            if h.base_offset >= 0 {
                self.remember(&h, h.base_offset as Offset);
            }
        }
    }

    /// The log was truncated to `end`: forgets the batches at or past it. Returns false
    /// when that leaves a producer whose earlier batches the table no longer holds: the
    /// caller rebuilds the table from the log.
    #[must_use]
    pub fn truncate(&mut self, end: Offset) -> bool {
        let mut exact = true;
        self.producers.retain(|_, p| {
            let before = p.recent.len();
            while p.recent.back().is_some_and(|r| r.base >= end) {
                p.recent.pop_back();
            }
            if p.recent.is_empty() && before > 0 {
                // Nothing of it left that we know of: gone if it had nothing before.
                exact &= !p.older;
                return false;
            }
            true
        });
        exact
    }

    /// The log start moved to `start`: producers whose every batch lies below it are
    /// forgotten, as Kafka does when DeleteRecords or retention removes them.
    pub fn forget_below(&mut self, start: Offset) {
        self.producers
            .retain(|_, p| p.last_offset().is_some_and(|last| last >= start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corelog_storage::batch::build;

    fn header(producer_id: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        let values: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8]).collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let b = build::batch(&refs, 0);
        BatchHeader {
            producer_id,
            producer_epoch: epoch,
            base_sequence: seq,
            ..BatchHeader::parse(&b).unwrap()
        }
    }

    #[test]
    fn sequences_accept_in_order_and_answer_duplicates_with_the_first_offset() {
        let mut p = ProducerTable::default();
        let a = header(7, 0, 0, 2);
        assert_eq!(p.check(&a), SeqCheck::Append);
        p.remember(&a, 100);
        assert_eq!(p.check(&a), SeqCheck::Duplicate(100));
        assert!(matches!(
            p.check(&header(7, 0, 5, 1)),
            SeqCheck::OutOfOrder(_)
        ));
        let next = header(7, 0, 2, 1);
        assert_eq!(p.check(&next), SeqCheck::Append);
        p.remember(&next, 102);
        let bumped = header(7, 1, 0, 1);
        assert_eq!(p.check(&bumped), SeqCheck::Append);
        p.remember(&bumped, 103);
        assert!(matches!(p.check(&header(7, 0, 3, 1)), SeqCheck::Fenced(_)));
        assert!(matches!(
            p.check(&header(7, 1, 4, 1)),
            SeqCheck::OutOfOrder(_)
        ));
    }

    #[test]
    fn remembering_twice_changes_nothing() {
        let mut once = ProducerTable::default();
        let a = header(1, 0, 0, 3);
        once.remember(&a, 10);
        let mut twice = once.clone();
        twice.remember(&a, 10);
        assert_eq!(once, twice);
    }

    #[test]
    fn truncation_forgets_the_cut_batches() {
        let mut p = ProducerTable::default();
        p.remember(&header(1, 0, 0, 1), 0);
        p.remember(&header(1, 0, 1, 1), 5);
        p.remember(&header(2, 0, 0, 1), 6);
        assert!(p.truncate(5));
        // Producer 1 continues at sequence 1 again, producer 2 is unknown.
        assert_eq!(p.check(&header(1, 0, 1, 1)), SeqCheck::Append);
        assert!(p.get(2).is_none());
    }

    #[test]
    fn truncation_past_the_known_history_asks_for_a_rebuild() {
        let mut p = ProducerTable::default();
        for i in 0..(HISTORY as i32 + 1) {
            p.remember(&header(1, 0, i, 1), 10 * i as u64);
        }
        // Batch 10 stays: the table still knows the producer's newest batch.
        assert!(p.truncate(20));
        let mut q = ProducerTable::default();
        for i in 0..(HISTORY as i32 + 1) {
            q.remember(&header(1, 0, i, 1), 10 * i as u64);
        }
        // Cutting every remembered batch leaves batch 0, which the table dropped.
        assert!(!q.truncate(10));
    }

    #[test]
    fn producers_below_the_log_start_are_forgotten() {
        let mut p = ProducerTable::default();
        p.remember(&header(1, 0, 0, 3), 0); // offsets 0..=2
        p.remember(&header(2, 0, 0, 1), 3);
        p.forget_below(3);
        assert!(p.get(1).is_none());
        assert!(p.get(2).is_some());
    }
}
