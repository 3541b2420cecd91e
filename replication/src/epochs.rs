//! The leader-epoch cache: which term wrote which offsets, as (term, first offset) runs.
//!
//! Because the Raft log is the Kafka log, an entry's term is its batch's
//! `partitionLeaderEpoch`, and terms only grow along the log, so the whole term history
//! fits in one short sorted list (Kafka keeps the same thing as `leader-epoch-checkpoint`).

use crate::{Offset, Term};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    /// (term, first offset written in that term), both strictly increasing.
    runs: Vec<(Term, Offset)>,
}

impl EpochCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a cache from stored runs; `None` unless terms and offsets strictly grow.
    pub fn from_runs(runs: Vec<(Term, Offset)>) -> Option<Self> {
        runs.windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
            .then_some(Self { runs })
    }

    /// Records that `term` wrote a batch starting at `base`; true if that began a run.
    pub fn record(&mut self, term: Term, base: Offset) -> bool {
        match self.runs.last() {
            Some(&(t, _)) if t == term => false,
            Some(&(t, s)) => {
                assert!(
                    term > t && base >= s,
                    "terms must grow along the log: {t}@{s} then {term}@{base}"
                );
                self.runs.push((term, base));
                true
            }
            None => {
                self.runs.push((term, base));
                true
            }
        }
    }

    /// The term of the entry holding `offset` (0 if none is known).
    pub fn term_at(&self, offset: Offset) -> Term {
        let i = self.runs.partition_point(|&(_, s)| s <= offset);
        i.checked_sub(1).map_or(0, |i| self.runs[i].0)
    }

    /// The first offset written in the term of `offset`.
    pub fn term_start(&self, offset: Offset) -> Offset {
        let i = self.runs.partition_point(|&(_, s)| s <= offset);
        i.checked_sub(1).map_or(0, |i| self.runs[i].1)
    }

    /// Forgets everything from `offset` on (the log was truncated there); true if a run
    /// went.
    pub fn truncate(&mut self, offset: Offset) -> bool {
        let before = self.runs.len();
        self.runs.retain(|&(_, s)| s < offset);
        self.runs.len() != before
    }

    pub fn runs(&self) -> &[(Term, Offset)] {
        &self.runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_by_offset_and_truncation() {
        let mut e = EpochCache::new();
        e.record(1, 0);
        e.record(1, 5);
        e.record(3, 10);
        assert_eq!(
            (e.term_at(0), e.term_at(9), e.term_at(10), e.term_at(99)),
            (1, 1, 3, 3)
        );
        assert_eq!((e.term_start(7), e.term_start(12)), (0, 10));
        e.truncate(10);
        assert_eq!(e.term_at(12), 1);
        e.truncate(0);
        assert_eq!(e.term_at(0), 0);
    }
}
