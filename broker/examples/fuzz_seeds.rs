//! Writes the seed corpora: for `request`, a valid rich body per advertised (API key,
//! version) behind its selector bytes; for `frame`, whole frames of the same; for
//! `replication_frame`, a few encoded envelopes. Usage:
//! `cargo run -p corelog-broker --example fuzz_seeds -- DIR` (writes DIR/<target>/).
//! The request selector bytes index the advertised pairs in the order the `request` target
//! enumerates them (api::SUPPORTED).

use std::path::PathBuf;

use corelog_broker::wire::guard;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let pairs: Vec<(i16, i16)> = corelog_broker::api::SUPPORTED
        .iter()
        .flat_map(|&(k, lo, hi)| (lo..=hi).map(move |v| (k as i16, v)))
        .collect();
    for target in ["request", "frame", "replication_frame"] {
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
    println!("seeds for {} requests in {}", pairs.len(), dir.display());
}
