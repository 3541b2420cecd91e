//! Latency histograms with fixed bounds, kept per thread (each shard is one thread, so
//! recording takes neither a lock nor an atomic) and merged when they are read.

/// Upper bounds, in seconds, of the buckets: 50 µs to 10 s, about three per decade
/// (a request or an fdatasync on this hardware spans that whole range).
pub const LATENCY_BOUNDS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Counts per bucket of [`LATENCY_BOUNDS`] (not cumulative), one more for what lies above
/// the last bound; the sum of what was recorded, in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub counts: [u64; LATENCY_BOUNDS.len() + 1],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn record(&mut self, seconds: f64) {
        let i = LATENCY_BOUNDS.partition_point(|&b| b < seconds);
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// (upper bound, count in that bucket) pairs, the last one unbounded.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        let mut h = Histogram::default();
        h.record(0.00005); // on a bound: that bucket (Prometheus' le is inclusive)
        h.record(0.0003);
        h.record(99.0);
        let b = h.buckets();
        assert_eq!(b[0], (0.00005, 1));
        assert_eq!(b[3], (0.0005, 1));
        assert_eq!(*b.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!(h.count, 3);
        let mut m = h.clone();
        m.merge(&h);
        assert_eq!(m.count, 6);
        assert_eq!(m.counts[3], 2);
        assert!((m.sum - 2.0 * h.sum).abs() < 1e-9);
    }
}
