//! Command line of the madsim build.

use clap::Parser;

use crate::harness::{self, Outcome, RunOptions};

#[derive(Parser, Debug)]
#[command(
    name = "corelog-sim",
    about = "Deterministic simulation of corelog's replication under faults"
)]
struct Args {
    /// Run one seed; prints its trace hash. Same seed, same run, same hash.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a swarm of seeds, `A..B` (B excluded); ends with "N passed, M failed".
    #[arg(long)]
    seeds: Option<String>,
    /// Turn on a known protocol bug (needs the `inject-bugs` feature); the checker must
    /// catch it.
    #[arg(long)]
    inject_bug: Option<String>,
    /// Print the names of the bugs `--inject-bug` takes, one a line.
    #[arg(long)]
    list_bugs: bool,
    /// Print the last events of passing runs too.
    #[arg(long)]
    verbose: bool,
}

pub fn main() -> i32 {
    let args = Args::parse();
    // A panic inside a run is a finding: the run reports it as a violation with its
    // message, so the default hook's backtrace would only be noise.
    if std::env::var_os("CORELOG_SIM_DEBUG").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    if args.list_bugs {
        return list_bugs();
    }
    let bug = args.inject_bug.as_deref();
    if let Some(name) = bug {
        if let Err(e) = check_bug(name) {
            eprintln!("{e}");
            return 2;
        }
    }
    match (args.seed, args.seeds.as_deref()) {
        (Some(seed), _) => {
            let out = run_one(seed, bug);
            report(&out, bug, true);
            println!("trace-hash: {:016x}", out.trace_hash);
            if out.passed() { 0 } else { 1 }
        }
        (None, Some(range)) => {
            let Some((a, b)) = range
                .split_once("..")
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            else {
                eprintln!("--seeds takes A..B, e.g. 1..200");
                return 2;
            };
            let (mut passed, mut failed) = (0u64, 0u64);
            for seed in a..b {
                let out = run_one(seed, bug);
                if out.passed() {
                    passed += 1;
                    if args.verbose {
                        report(&out, bug, true);
                    }
                } else {
                    failed += 1;
                    report(&out, bug, false);
                }
            }
            println!("{passed} passed, {failed} failed");
            if failed == 0 { 0 } else { 1 }
        }
        (None, None) => {
            eprintln!("give --seed N or --seeds A..B (see --help)");
            2
        }
    }
}

pub fn run_one(seed: u64, bug: Option<&str>) -> Outcome {
    #[allow(unused_mut)]
    let mut opts = RunOptions::from_seed(seed);
    #[cfg(feature = "inject-bugs")]
    if let Some(name) = bug {
        opts.bugs = corelog_replication::Bugs::from_name(name).expect("checked");
    }
    let _ = bug;
    harness::run(seed, opts)
}

fn report(out: &Outcome, bug: Option<&str>, tail_if_passed: bool) {
    let o = &out.options;
    let shape = format!(
        "{} nodes, {} groups, {} clients, loss {}, latency <= {} ms, faults {} ms",
        o.nodes, o.groups, o.clients, o.packet_loss, o.latency_max_ms, o.fault_ms
    );
    if out.passed() {
        println!(
            "seed {}: passed ({shape}; {} acked, {} reads)",
            out.seed, out.acked, out.reads
        );
        if !tail_if_passed {
            return;
        }
    } else {
        println!(
            "seed {}: FAILED ({shape}; {} acked, {} reads)",
            out.seed, out.acked, out.reads
        );
        for v in &out.violations {
            println!("  violation {v}");
        }
        let bug_arg = bug.map_or(String::new(), |b| {
            format!(" --features inject-bugs -- --inject-bug {b} --seed")
        });
        if bug_arg.is_empty() {
            println!(
                "  reproduce: cargo run -p corelog-sim -- --seed {}",
                out.seed
            );
        } else {
            println!(
                "  reproduce: cargo run -p corelog-sim{bug_arg} {}",
                out.seed
            );
        }
        println!("  last events:");
    }
    if !out.passed() {
        for e in &out.tail {
            println!("    {e}");
        }
    }
}

#[cfg(feature = "inject-bugs")]
fn list_bugs() -> i32 {
    for name in corelog_replication::Bugs::NAMES {
        println!("{name}");
    }
    0
}

#[cfg(not(feature = "inject-bugs"))]
fn list_bugs() -> i32 {
    eprintln!(
        "built without the inject-bugs feature: cargo run -p corelog-sim --features inject-bugs -- --list-bugs"
    );
    2
}

#[cfg(feature = "inject-bugs")]
fn check_bug(name: &str) -> Result<(), String> {
    corelog_replication::Bugs::from_name(name)
        .map(|_| ())
        .ok_or_else(|| format!("unknown bug {name:?}; --list-bugs names them"))
}

#[cfg(not(feature = "inject-bugs"))]
fn check_bug(_: &str) -> Result<(), String> {
    Err("built without the inject-bugs feature: add --features inject-bugs".into())
}
