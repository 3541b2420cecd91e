//! A produced record batch through the broker's validation (framing, CRC, the record walk
//! with capped decompression). The target fixes up batchLength and the CRC so that the
//! mutated records, not the checksum, meet the walk; the first byte picks the codec, and
//! the codec a batch that passes is recompressed to (compression.type), which must give
//! back the very same records.
#![no_main]

use corelog_broker::records;
use corelog_fuzz::{PeakAlloc, allowed, peak_during};
use corelog_storage::batch;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fuzz_target!(|data: &[u8]| {
    if data.len() < 1 + batch::HEADER_LEN {
        return;
    }
    let mut b = data[1..].to_vec();
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[16] = 2; // magic
    b[21..23].copy_from_slice(&i16::from(data[0] % 5).to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    let (_, peak) = peak_during(|| {
        if let Ok(h) = batch::validate(&b, usize::MAX) {
            let _ = records::validate(&b, &h);
        }
    });
    // Decompressors hold buffers of a fixed size however small the input (lz4 frames up to
    // ~16 MiB for 4 MiB linked blocks, zstd windows up to 16 MiB; validation runs one batch
    // at a time per shard), plus one record's buffer that grows with what the stream
    // yields; never what a length claims.
    assert!(
        peak <= allowed(b.len()) + (32 << 20),
        "{} bytes held {peak}",
        b.len()
    );
    // Recompression, for what validation accepts: the records must come back byte for byte.
    if let Ok(h) = batch::validate(&b, usize::MAX) {
        if let Ok((_, kept)) = records::validate_keeping(&b, &h, usize::MAX) {
            let plain = kept.records_or(&b);
            let to = records::Recompress {
                codec: (data[0] / 5) % 5,
                level: 1,
            };
            let out = batch::rewrap(&b, to.codec, &records::compress(to, plain).unwrap());
            let oh = batch::validate(&out, usize::MAX).expect("a recompressed batch is valid");
            let (_, again) =
                records::validate_keeping(&out, &oh, usize::MAX).expect("and its records too");
            assert_eq!(again.records_or(&out), plain);
        }
    }
});
