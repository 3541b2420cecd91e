//! Appends and syncs batches forever on real files, printing `synced <offset>` after each
//! sync, until killed. The child of the SIGKILL crash test (tests/it/crash.rs).
//!
//! Batch contents are a pure function of their base offset (`expected_batch`), so whoever
//! reopens the log can check every byte without a record of what was written.
//!
//! Usage: corelog-storage-torture DIR SEED

use std::io::Write;

#[path = "../torture_payload.rs"]
mod torture_payload;

use corelog_storage::{GlommioDisk, Log};
use torture_payload::{config, expected_batch};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(seed)) = (args.next(), args.next()) else {
        eprintln!("usage: corelog-storage-torture DIR SEED");
        std::process::exit(2);
    };
    let seed: u64 = seed.parse().expect("SEED must be a number");
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let disk = GlommioDisk::open_dir(&dir).await.expect("open dir");
            let mut log = Log::open(disk, config()).await.expect("open log");
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut out = std::io::stdout().lock();
            writeln!(out, "opened {}", log.next_offset()).unwrap();
            loop {
                for _ in 0..rng.usize(1..6) {
                    let mut b = expected_batch(log.next_offset());
                    log.append(&mut b, 0).await.expect("append");
                }
                let durable = log.sync().await.expect("sync");
                writeln!(out, "synced {durable}").unwrap();
                out.flush().unwrap();
            }
        })
        .expect("executor")
        .join()
        .expect("join");
}
