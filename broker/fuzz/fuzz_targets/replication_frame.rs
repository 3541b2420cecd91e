//! Peer frames of the replication transport: length prefix, version, rkyv header
//! (validated by bytecheck), batch bytes.
#![no_main]

use bytes::Bytes;
use corelog_fuzz::{PeakAlloc, allowed, peak_during};
use corelog_replication::frame;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fuzz_target!(|data: &[u8]| {
    let (_, peak) = peak_during(|| {
        if let Ok(Some(n)) = frame::frame_len(data)
            && n <= data.len()
        {
            let _ = frame::decode(Bytes::copy_from_slice(&data[..n]));
        }
    });
    assert!(
        peak <= allowed(data.len()),
        "{} bytes held {peak}",
        data.len()
    );
});
