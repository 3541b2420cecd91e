//! Writes the seed corpora: for `request`, a valid rich body per advertised (API key,
//! version) behind its selector bytes; for `frame`, whole frames of the same; for
//! `replication_frame`, a few encoded envelopes; for `sasl`, a PLAIN token and SCRAM
//! exchanges' client messages. Usage:
//! `cargo run -p corelog-broker --example fuzz_seeds -- DIR` (writes DIR/<target>/).
//! The request selector bytes index the advertised pairs in the order the `request` target
//! enumerates them (api::SUPPORTED).

use std::io::Write;
use std::path::PathBuf;

use corelog_broker::wire::guard;

/// Compresses a batch's records with one codec.
type Compress = fn(&[u8]) -> Vec<u8>;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let pairs: Vec<(i16, i16)> = corelog_broker::api::SUPPORTED
        .iter()
        .flat_map(|&(k, lo, hi)| (lo..=hi).map(move |v| (k as i16, v)))
        .collect();
    for target in ["request", "frame", "replication_frame", "batch", "sasl"] {
        std::fs::create_dir_all(dir.join(target)).unwrap();
    }
    for (i, &(key, version)) in pairs.iter().enumerate() {
        let body = guard::sample_body(key, version).expect("advertised request without a layout");
        let mut req = (i as u16).to_be_bytes().to_vec();
        req.extend([0, 0]);
        req.extend(&body);
        std::fs::write(dir.join("request").join(format!("{key}-{version}")), req).unwrap();
        let frame = corelog_broker::conn::sample_frame(key, version, &body);
        std::fs::write(dir.join("frame").join(format!("{key}-{version}")), frame).unwrap();
    }
    for (i, f) in corelog_replication::frame::sample_frames()
        .iter()
        .enumerate()
    {
        std::fs::write(dir.join("replication_frame").join(format!("{i}")), f).unwrap();
    }
    // A valid batch per codec (the target takes the codec from the first byte and fixes
    // the length and CRC itself).
    let values: [&[u8]; 3] = [b"alpha", b"", b"gamma"];
    let plain = corelog_storage::batch::build::batch(&values, 1_700_000_000_000);
    let (head, records) = plain.split_at(corelog_storage::batch::HEADER_LEN);
    let compressors: [Compress; 5] = [
        |r| r.to_vec(),
        |r| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(r).unwrap();
            e.finish().unwrap()
        },
        |r| snap::raw::Encoder::new().compress_vec(r).unwrap(),
        |r| {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(r).unwrap();
            e.finish().unwrap()
        },
        |r| zstd::stream::encode_all(r, 1).unwrap(),
    ];
    for (codec, compress) in compressors.iter().enumerate() {
        let mut seed = vec![codec as u8];
        seed.extend(head);
        seed.extend(compress(records));
        std::fs::write(dir.join("batch").join(format!("codec-{codec}")), seed).unwrap();
    }
    // The sasl target: the first byte picks the mechanism (Mechanism::ALL: SCRAM-SHA-256,
    // SCRAM-SHA-512, PLAIN), tokens are split at 0xFF.
    let scram =
        b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL\xffc=biws,r=fyko+d2lbbFgONRv9qkxdawL,p=AAAA";
    for (name, pick, token) in [
        ("plain", 2u8, &b"\0alice\0alice-secreT"[..]),
        ("scram-256", 0, &scram[..]),
        ("scram-512", 1, &scram[..]),
    ] {
        let mut seed = vec![pick];
        seed.extend(token);
        std::fs::write(dir.join("sasl").join(name), seed).unwrap();
    }
    println!("seeds for {} requests in {}", pairs.len(), dir.display());
}
