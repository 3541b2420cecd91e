//! Structure-aware: the first two bytes pick an advertised (API key, version); two more
//! may turn the body into a length bomb (0x7fffffff written at a position) or truncate it.
//! The guard runs first, as in the broker; what it passes, the codec decodes. Neither may
//! panic or hold more than `allowed(len)` heap bytes. Seeds: valid bodies from `seeds`.
#![no_main]

use bytes::Bytes;
use corelog_broker::wire::guard;
use corelog_fuzz::{PeakAlloc, advertised, allowed, peak_during};
use kafka_protocol::messages::{ApiKey, RequestKind};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let pairs = advertised();
    let (key, version) = pairs[u16::from_be_bytes([data[0], data[1]]) as usize % pairs.len()];
    let (twist, pos) = (data[2], data[3] as usize);
    let mut body = data[4..].to_vec();
    if twist & 1 == 1 && body.len() >= 4 {
        let at = pos % (body.len() - 3);
        body[at..at + 4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    }
    if twist & 2 == 2 && !body.is_empty() {
        body.truncate(pos % body.len());
    }
    let len = body.len();
    // The guard's layout table is built on first use: not the input's doing.
    corelog_fuzz::warm_up();
    let (_, peak) = peak_during(|| {
        if guard::check(key, version, &body).is_ok() {
            let api = ApiKey::try_from(key).unwrap();
            let _ = RequestKind::decode(api, &mut Bytes::from(body), version);
        }
    });
    assert!(
        peak <= allowed(len),
        "{key} v{version}: {len} bytes held {peak} heap bytes"
    );
});
