//! The simulator's own tests need the `--cfg madsim` build. This plain-build test runs
//! them there (own target dir, `target/sim`), so `cargo test --workspace` covers the
//! determinism test and the injected-bug tests too.

#![cfg(not(madsim))]

use std::process::Command;

#[test]
fn simulator_tests_pass_under_madsim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CORELOG_SIM_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("sim"));
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .env("RUSTFLAGS", "--cfg madsim")
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "test",
            "--release",
            "-p",
            "corelog-sim",
            "--features",
            "inject-bugs",
            "--lib",
        ])
        .status()
        .expect("run cargo for the madsim build");
    assert!(status.success(), "the madsim test build failed");
}
