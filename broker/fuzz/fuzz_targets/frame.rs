//! Raw bytes as a socket delivers them: a stream of frames parsed exactly as the broker's
//! connection reader does (size prefix, header, guard, codec), up to the first refusal.
#![no_main]

use bytes::Bytes;
use corelog_broker::conn::Request;
use corelog_fuzz::{PeakAlloc, allowed, peak_during};
use kafka_protocol::messages::RequestKind;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fuzz_target!(|data: &[u8]| {
    // The guard's layout table is built on first use: not the input's doing.
    corelog_fuzz::warm_up();
    let (_, peak) = peak_during(|| {
        let mut rest = Bytes::copy_from_slice(data);
        while let Ok(Some((api, version, _, request))) =
            corelog_broker::conn::parse_frame(&mut rest, 1 << 20)
        {
            // What passed the checks, the handler decodes with the codec.
            if let Request::Decodable { mut body, .. } = request {
                let _ = RequestKind::decode(api, &mut body, version);
            }
        }
    });
    assert!(
        peak <= allowed(data.len()),
        "{} bytes held {peak}",
        data.len()
    );
});
