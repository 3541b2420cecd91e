//! `corelog-sim`: runs the replication core on simulated brokers under faults.
//!
//! ```text
//! cargo run -p corelog-sim -- --seed 42         # one run, replayable; prints trace-hash
//! cargo run -p corelog-sim -- --seeds 1..200    # a swarm; ends with "N passed, M failed"
//! ```
//!
//! The simulation needs the `--cfg madsim` build. The plain build of this binary (what
//! `cargo run -p corelog-sim` makes) is a launcher: it runs cargo again with
//! `RUSTFLAGS="--cfg madsim"` in its own target dir (`target/sim`), forwarding the
//! arguments, so both builds stay cached side by side.

#[cfg(madsim)]
fn main() {
    std::process::exit(corelog_sim::cli::main());
}

#[cfg(not(madsim))]
fn main() {
    use std::process::Command;
    if std::env::var_os("CORELOG_SIM_LAUNCHED").is_some() {
        eprintln!(
            "corelog-sim: the relaunched build lacks --cfg madsim; set RUSTFLAGS=\"--cfg madsim\""
        );
        std::process::exit(2);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CORELOG_SIM_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("sim"));
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(f) if !f.trim().is_empty() => format!("{f} --cfg madsim"),
        _ => "--cfg madsim".to_string(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .env("RUSTFLAGS", rustflags)
        .env("CARGO_TARGET_DIR", &target)
        .env("CORELOG_SIM_LAUNCHED", "1")
        .args(["run", "--quiet", "-p", "corelog-sim"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    if cfg!(feature = "inject-bugs") {
        cmd.args(["--features", "inject-bugs"]);
    }
    cmd.arg("--").args(std::env::args_os().skip(1));
    match cmd.status() {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("corelog-sim: could not run cargo for the madsim build: {e}");
            std::process::exit(2);
        }
    }
}
