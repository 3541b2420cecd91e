//! Shared by the torture binary and the crash test that checks its output (included by
//! `#[path]` in both; not part of the library).

use corelog_storage::LogConfig;
use corelog_storage::batch::build;

/// Small segments so that kills land during rolls too.
pub fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 * 1024,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

/// The batch whose base offset is `base`: 1..=8 records of 10..3000 bytes, all derived
/// from `base`.
pub fn expected_batch(base: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(base.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let values: Vec<Vec<u8>> = (0..rng.usize(1..9))
        .map(|_| {
            let len = rng.usize(10..3000);
            (0..len).map(|_| rng.u8(..)).collect()
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    let mut b = build::batch(&refs, base as i64);
    corelog_storage::batch::set_base_offset(&mut b, base as i64);
    b
}
