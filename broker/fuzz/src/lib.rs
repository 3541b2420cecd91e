//! What the fuzz targets share: an allocator that records the peak of live heap bytes, so
//! a target can assert that no input makes the decoder hold more than a small multiple of
//! its own size (a length bomb shows up as a huge reservation, long before it would abort).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct PeakAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Runs `f` and returns how many heap bytes above the starting level it held at most.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(start))
}

/// The most a request of `len` bytes may make the decoder hold: generous per byte (decoded
/// structs are larger than their wire form), but linear in the input.
pub fn allowed(len: usize) -> usize {
    64 * len + (64 << 10)
}

/// The (API key, version) pairs corelog advertises.
pub fn advertised() -> Vec<(i16, i16)> {
    corelog_broker::api::SUPPORTED
        .iter()
        .flat_map(|&(k, lo, hi)| (lo..=hi).map(move |v| (k as i16, v)))
        .collect()
}

/// Builds what is built once per process (the guard's layout table), so that it is not
/// counted against the first input.
pub fn warm_up() {
    let _ = corelog_broker::wire::guard::knows(0, 0);
}
