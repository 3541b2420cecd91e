//! What record validation costs per produced byte, per codec, next to the CRC32C check
//! every batch already pays: batches of 16 records of 1 KiB (half random, half
//! repetitive, so codecs have something to do), validated over and over for a second
//! each. Usage: `cargo run --release -p corelog-broker --example validate_bench`.
//! docs/benchmarks.md relates the figures to the broker's measured CPU per produced byte.

use std::io::Write;
use std::time::{Duration, Instant};

use corelog_storage::batch::{self, HEADER_LEN, build};

type Compress = fn(&[u8]) -> Vec<u8>;

/// Runs `f` for about a second; returns the produced (uncompressed) bytes per second.
fn rate(bytes_per_call: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        for _ in 0..64 {
            f();
        }
        calls += 64;
    }
    calls as f64 * bytes_per_call as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut rng = fastrand::Rng::with_seed(7);
    let values: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            let mut v = vec![b'a' + (i % 26) as u8; 1024];
            rng.fill(&mut v[..512]);
            v
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    let plain = build::batch(&refs, 1_700_000_000_000);
    let records = &plain[HEADER_LEN..];
    let codecs: [(&str, u8, Compress); 5] = [
        ("none", 0, |r| r.to_vec()),
        ("gzip", 1, |r| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(r).unwrap();
            e.finish().unwrap()
        }),
        ("snappy", 2, |r| {
            snap::raw::Encoder::new().compress_vec(r).unwrap()
        }),
        ("lz4", 3, |r| {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(r).unwrap();
            e.finish().unwrap()
        }),
        ("zstd", 4, |r| zstd::stream::encode_all(r, 3).unwrap()),
    ];
    let crc = rate(plain.len(), || {
        std::hint::black_box(crc32c::crc32c(std::hint::black_box(&plain[21..])));
    });
    println!("batch: 16 records x 1 KiB = {} bytes", plain.len());
    println!("crc32c (already on the path): {:.0} MB/s", crc / 1e6);
    println!("codec   stored bytes   validation MB/s (of uncompressed records)");
    for (name, codec, compress) in codecs {
        let b = build::with_codec(&plain, codec, &compress(records));
        let h = batch::validate(&b, usize::MAX).unwrap();
        corelog_broker::records::validate(&b, &h).expect("a valid batch");
        let r = rate(plain.len(), || {
            std::hint::black_box(corelog_broker::records::validate(&b, &h).unwrap());
        });
        println!("{name:<7} {:>12}   {:>10.0}", b.len(), r / 1e6);
    }
}
