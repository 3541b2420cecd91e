//! SIGKILL crash test on real files: a child process appends and syncs in a loop and
//! reports each durable offset; it is killed at a random moment, the log is reopened, and
//! every batch must be intact with nothing reported as synced missing. Several rounds on
//! the same directory, so recovery of a recovered log is covered too.

#[path = "../../src/torture_payload.rs"]
mod torture_payload;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use corelog_storage::{GlommioDisk, Log};

use crate::contract::read_all;

#[test]
fn sigkill_at_a_random_moment_loses_nothing_synced() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let seed = fastrand::u64(..);
    eprintln!("crash test seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut last_synced = 0u64;
    for round in 0..5 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelog-storage-torture"))
            .arg(dir.path())
            .arg((seed + round).to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn torture child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until it has opened the log, then let it run a random while.
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child started");
        let opened: u64 = first
            .strip_prefix("opened ")
            .expect("opened line")
            .parse()
            .unwrap();
        assert!(
            opened >= last_synced,
            "round {round}: child recovered {opened} < synced {last_synced}"
        );
        std::thread::sleep(Duration::from_millis(rng.u64(50..700)));
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        let mut syncs = 0;
        for line in rx.try_iter() {
            if let Some(n) = line.strip_prefix("synced ") {
                last_synced = last_synced.max(n.parse().unwrap());
                syncs += 1;
            }
        }
        assert!(syncs > 0, "round {round}: the child never synced");

        let path = dir.path().to_path_buf();
        let expect = last_synced;
        let recovered = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let disk = GlommioDisk::open_dir(&path).await.unwrap();
                let log = Log::open(disk, torture_payload::config()).await.unwrap();
                let batches = read_all(&log).await;
                for (base, bytes) in &batches {
                    assert_eq!(
                        *bytes,
                        torture_payload::expected_batch(*base),
                        "batch at {base} differs"
                    );
                }
                let next = log.next_offset();
                assert!(
                    next >= expect,
                    "lost synced data: log ends at {next}, {expect} was synced"
                );
                (next, log.segment_count())
            })
            .unwrap()
            .join()
            .unwrap();
        eprintln!("round {round}: {syncs} syncs, synced {last_synced}, recovered {recovered:?}");
    }
}
